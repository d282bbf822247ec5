//! One residual attention block (pre-LN, multi-head self-attention, QuickGELU MLP) with an
//! explicit backward pass, optional LoRA adapters on the attention projections, and
//! attention to a shared "past" (the keys/values of a prefix computed once for a batch).
//!
//! ```text
//! h = x + out(attn(ln1(x)))      attn keys/values = [past ; own], causal optional
//! y = h + fc2(gelu(fc1(ln2(h))))
//! ```
//! [`Block::forward_with`] returns the output rows, this block's own keys/values (so they
//! can serve as the past of another batch) and, when asked, a [`BlockTape`];
//! [`Block::backward`] maps K cotangents of the output to K cotangents of the input, of the
//! past keys/values, to per-cotangent LoRA gradients and — when the tape was kept with
//! [`TapeMode::Weights`] — to the gradients of all the block's weights (summed over K).

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};

use super::attention::{self, AttentionShape};
use super::attention_past;
use super::checkpoint::WeightSource;
use super::lora_rows;
use super::matmul::rows_compute_alike;
use super::ops::{
    causal_mask, matmul, outer_per_cotangent, quick_gelu, quick_gelu_backward, LayerNorm, LayerNormGrad,
    LayerNormTape, Linear, LinearGrad, TapeMode,
};
use super::packing::{packed, padded, Packing};
use super::params::{BlockLayer, Part, Tower, Wb};

/// `(out, in)` of a block's four row-wise products — q/k/v, out, fc1, fc2 — at width `d`
/// and MLP width `hidden`: the shapes that decide whether a row keeps its bits at other
/// row counts ([`super::matmul::rows_compute_alike`]).
pub fn row_products(d: usize, hidden: usize) -> [(usize, usize); 4] {
    [(3 * d, d), (d, d), (hidden, d), (d, hidden)]
}

/// A low-rank adapter `Δy = scale · B (A · drop(x))` on one projection.
#[derive(Debug, Clone)]
pub struct Lora {
    /// Down projection `[r, in]`.
    pub a: Tensor,
    /// Up projection `[out, r]`.
    pub b: Tensor,
    /// Output scale (the reference uses α/√r).
    pub scale: f64,
    /// Dropout on the adapter input for this forward: a `[M, in]` tensor of 0 and
    /// 1/(1−p), or `None` (evaluation, or no dropout).
    pub dropout_mask: Option<Tensor>,
}

/// LoRA adapters for the four attention projections of one block (any may be absent).
#[derive(Debug, Clone, Default)]
pub struct BlockLora {
    /// On the query projection.
    pub q: Option<Lora>,
    /// On the key projection.
    pub k: Option<Lora>,
    /// On the value projection.
    pub v: Option<Lora>,
    /// On the output projection.
    pub o: Option<Lora>,
}

impl BlockLora {
    /// The adapters on q, k and v, in the fused projection's order.
    pub fn qkv(&self) -> [&Option<Lora>; 3] {
        [&self.q, &self.k, &self.v]
    }

    /// Whether any of q, k and v has an adapter.
    pub fn adapts_qkv(&self) -> bool {
        self.qkv().iter().any(|ad| ad.is_some())
    }
}

/// The row of position 0 of each of `n` sequences of `s` rows, as an index tensor on
/// `device`: the rows a tower's class token (or first position) occupies.
pub fn first_positions(n: usize, s: usize, device: &Device) -> Result<Tensor> {
    let rows: Vec<u32> = (0..n).map(|i| (i * s) as u32).collect();
    Ok(Tensor::from_vec(rows, n, device)?)
}

/// Gradients of one LoRA adapter, one slice per cotangent.
#[derive(Debug, Clone)]
pub struct LoraGrad {
    /// `[K, r, in]`.
    pub a: Tensor,
    /// `[K, out, r]`.
    pub b: Tensor,
}

/// Gradients of a block's LoRA adapters (present where the adapter is).
#[derive(Debug, Clone, Default)]
pub struct BlockLoraGrad {
    /// Query adapter.
    pub q: Option<LoraGrad>,
    /// Key adapter.
    pub k: Option<LoraGrad>,
    /// Value adapter.
    pub v: Option<LoraGrad>,
    /// Output adapter.
    pub o: Option<LoraGrad>,
}

/// Keys and values of one block for a batch, head-major: `[N, H, T, hd]` each.
#[derive(Debug, Clone)]
pub struct KeyValues {
    /// Keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

/// The layout of a forward call: N sequences of S positions, attending causally or not,
/// optionally to P shared past positions.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Sequences.
    pub n: usize,
    /// Positions per sequence in this call.
    pub s: usize,
    /// Causal (text) or full (vision) attention.
    pub causal: bool,
}

/// What [`Block::backward`] needs from the forward.
pub struct BlockTape {
    shape: Shape,
    /// The rows were packed ([`Block::forward_packed`]).
    packing: Option<Arc<Packing>>,
    /// Rows of an own prefix before the packed ones ([`Block::forward_prefixed`]).
    prefix: usize,
    past_len: usize,
    /// Kept with [`TapeMode::Weights`]: the backward also returns weight gradients.
    weights: bool,
    ln1: LayerNormTape,
    /// ln1 output (input of the q/k/v projections), kept with LoRA on q/k/v or for weights.
    ln1_out: Option<Tensor>,
    attn: AttentionTape,
    /// Attention output before the out projection, kept with LoRA on it or for weights.
    attn_out: Option<Tensor>,
    lora_down: [Option<Tensor>; 4],
    /// The rows past the attention ran for ([`Block::forward_prefixed_rows`]); the
    /// tapes from `attn_out` on and the cotangents of the output cover these alone.
    out_rows: Option<Tensor>,
    ln2: LayerNormTape,
    /// ln2 output (input of fc1), kept for weights.
    ln2_out: Option<Tensor>,
    fc1_out: Tensor,
    /// QuickGELU output (input of fc2), kept for weights.
    act: Option<Tensor>,
}

/// What the attention core's backward needs, in the layout of the path that ran.
enum AttentionTape {
    /// The fused CPU kernel ([`super::attention`]): the q/k/v rows `[N·S, 3D]` and the
    /// probabilities `[N, H, S, S]`.
    Fused { qkv: Tensor, probs: Tensor },
    /// The fused CPU kernel with a shared past ([`super::attention_past`]): the q/k/v rows
    /// (packed when the block ran packed), the past, and the probabilities `[N, H, S, P+S]`.
    FusedPast {
        qkv: Tensor,
        past: KeyValues,
        probs: Tensor,
    },
    /// A prefix and the packed sequences after it in one call
    /// ([`Block::forward_prefixed`]): the prefix's q/k/v rows `[P, 3D]` and probabilities
    /// (the fused kernel), the sequences' q/k/v rows, the prefix's keys and values as
    /// their past, and their probabilities (the kernel with a past).
    Prefixed {
        prefix_qkv: Tensor,
        prefix_probs: Tensor,
        qkv: Tensor,
        past: KeyValues,
        probs: Tensor,
    },
    /// The candle composition (other devices and dtypes, or a shared past): head-major
    /// queries, keys and values including the past `[N, H, P+S, hd]`, probabilities.
    Split {
        q: Tensor,
        keys: Tensor,
        values: Tensor,
        probs: Tensor,
    },
}

/// What a block call's positions attend to besides their own sequence.
#[derive(Clone, Copy)]
enum Before<'a> {
    /// Nothing.
    Nothing,
    /// Keys and values computed by another call, `[1, H, P, hd]`.
    Past(&'a KeyValues),
    /// The call's own first P rows: one causal sequence that every (packed) sequence
    /// after it attends to.
    OwnPrefix(usize),
}

/// Which input rows a block's backward returns cotangents for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputRows {
    /// None.
    None,
    /// Every row.
    All,
    /// The first rows, as many as given.
    First(usize),
}

/// How a block call's rows are laid out.
#[derive(Clone, Copy)]
struct Rows<'a> {
    /// The rows are packed sequences ([`Block::forward_packed`]).
    packing: Option<&'a Arc<Packing>>,
    /// What they attend to besides their own sequence.
    before: Before<'a>,
    /// The rows to compute past the attention ([`Block::forward_prefixed_rows`]); all
    /// when `None`.
    out: Option<&'a Tensor>,
}

impl<'a> Rows<'a> {
    /// Every row's output.
    fn all(packing: Option<&'a Arc<Packing>>, before: Before<'a>) -> Self {
        Rows {
            packing,
            before,
            out: None,
        }
    }
}

/// Output of [`Block::forward`].
pub struct BlockOutput {
    /// Output rows `[N·S, D]` (packed rows after [`Block::forward_packed`]).
    pub y: Tensor,
    /// The tape, when requested.
    pub tape: Option<BlockTape>,
    /// This call's q/k/v rows `[N·S, 3D]` (its own keys and values, on demand).
    qkv: Tensor,
    shape: Shape,
    /// The rows were packed, so they do not form `[N, S]` sequences.
    packed: bool,
    heads: usize,
}

impl BlockOutput {
    /// This call's own keys/values `[N, H, S, hd]` (to serve as a past elsewhere).
    pub fn kv(&self) -> Result<KeyValues> {
        let Shape { n, s, .. } = self.shape;
        if self.packed {
            bail!("a block run on packed rows has no [N, S] keys and values to serve as a past");
        }
        KeyValues::of_rows(&self.qkv, n, s, self.heads)
    }
}

impl KeyValues {
    /// The keys and values `[N, H, S, hd]` in fused q/k/v rows `[N·S, 3D]`.
    fn of_rows(qkv: &Tensor, n: usize, s: usize, heads: usize) -> Result<Self> {
        let d = qkv.dim(1)? / 3;
        let split = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(1, i * d, d)?
                .reshape((n, s, heads, d / heads))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        Ok(KeyValues {
            k: split(1)?,
            v: split(2)?,
        })
    }
}

/// `d_qkv [K, rows, 3D]` with the cotangents `ek`, `ev` `[K, rows, D]` of the call's own
/// keys and values (from a call that used them as its past) added to its k and v columns.
fn add_own_kv(d_qkv: &Tensor, ek: &Tensor, ev: &Tensor) -> Result<Tensor> {
    let zeros = ek.zeros_like()?;
    Ok((d_qkv + Tensor::cat(&[&zeros, ek, ev], 2)?)?)
}

/// Cotangents produced by [`Block::backward`].
pub struct BlockGrad {
    /// W.r.t. the input rows, `[K, N·S, D]` (absent when not requested).
    pub dx: Option<Tensor>,
    /// W.r.t. the past keys and values as rows `[K, P, D]`, summed over the N sequences
    /// that shared them.
    pub d_past: Option<(Tensor, Tensor)>,
    /// LoRA gradients.
    pub lora: BlockLoraGrad,
    /// Gradients of the block's weights, summed over the K cotangents (present when the
    /// tape was kept with [`TapeMode::Weights`]).
    pub weights: Option<BlockWeightGrad>,
}

/// Gradients of all weights of one [`Block`], in its fused layout (q, k, v stacked in
/// `qkv` as in the weights).
#[derive(Debug, Clone)]
pub struct BlockWeightGrad {
    /// Pre-attention LayerNorm.
    pub ln1: LayerNormGrad,
    /// Fused q/k/v projection: weight `[3D, D]`, bias `[3D]`.
    pub qkv: LinearGrad,
    /// Attention output projection.
    pub out: LinearGrad,
    /// Pre-MLP LayerNorm.
    pub ln2: LayerNormGrad,
    /// MLP up projection.
    pub fc1: LinearGrad,
    /// MLP down projection.
    pub fc2: LinearGrad,
}

impl BlockWeightGrad {
    /// Elementwise sum (a block run twice, e.g. on a shared prefix and on the bodies).
    pub fn add(&self, o: &BlockWeightGrad) -> Result<BlockWeightGrad> {
        Ok(BlockWeightGrad {
            ln1: self.ln1.add(&o.ln1)?,
            qkv: self.qkv.add(&o.qkv)?,
            out: self.out.add(&o.out)?,
            ln2: self.ln2.add(&o.ln2)?,
            fc1: self.fc1.add(&o.fc1)?,
            fc2: self.fc2.add(&o.fc2)?,
        })
    }
}

/// One residual attention block (its weights are read-only here; training updates them
/// as named tensors, [`super::weights::ClipWeights`], and rebuilds the block).
#[derive(Debug, Clone)]
pub struct Block {
    /// Pre-attention LayerNorm.
    pub ln1: LayerNorm,
    /// Query, key, value projections fused into one `[3D, D]` map.
    pub qkv: Linear,
    /// Attention output projection.
    pub out: Linear,
    /// Pre-MLP LayerNorm.
    pub ln2: LayerNorm,
    /// MLP up projection.
    pub fc1: Linear,
    /// MLP down projection.
    pub fc2: Linear,
    /// Attention heads.
    pub heads: usize,
    /// Residual width.
    pub width: usize,
}

impl Block {
    /// Loads block `index` of `tower` (q, k and v fused into one `[3D, D]` projection).
    pub fn load(
        ck: &dyn WeightSource,
        tower: Tower,
        index: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let t = |layer, wb| ck.part(Part::Block(tower, index, layer, wb), dtype, dev);
        let linear =
            |layer| -> Result<Linear> { Ok(Linear::new(t(layer, Wb::Weight)?, Some(t(layer, Wb::Bias)?))) };
        let norm = |layer| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: t(layer, Wb::Weight)?,
                bias: t(layer, Wb::Bias)?,
                eps: ck.config().layer_norm_eps,
            })
        };
        let qkv = |wb| -> Result<Tensor> {
            let parts = [BlockLayer::Q, BlockLayer::K, BlockLayer::V].map(|l| t(l, wb));
            let [q, k, v] = parts;
            Ok(Tensor::cat(&[q?, k?, v?], 0)?)
        };
        let (width, heads) = match tower {
            Tower::Text => (ck.config().text.width, ck.config().text.heads),
            Tower::Vision => (ck.config().vision.width, ck.config().vision.heads),
        };
        Ok(Block {
            ln1: norm(BlockLayer::Ln1)?,
            qkv: Linear::new(qkv(Wb::Weight)?, Some(qkv(Wb::Bias)?)),
            out: linear(BlockLayer::Out)?,
            ln2: norm(BlockLayer::Ln2)?,
            fc1: linear(BlockLayer::Fc1)?,
            fc2: linear(BlockLayer::Fc2)?,
            heads,
            width,
        })
    }

    /// Lays out each of the block's frozen linears for faster products with the same
    /// bits ([`Linear::prepare_frozen`]).
    pub fn prepare_frozen(&mut self) -> Result<()> {
        for lin in [&mut self.qkv, &mut self.out, &mut self.fc1, &mut self.fc2] {
            lin.prepare_frozen()?;
        }
        Ok(())
    }

    fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    /// `[N·S, D]` rows → `[N, H, S, hd]`.
    fn split_heads(&self, rows: &Tensor, n: usize, s: usize) -> Result<Tensor> {
        Ok(rows
            .reshape((n, s, self.heads, self.head_dim()))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// `[N, H, S, hd]` → `[N·S, D]` rows.
    fn merge_heads(&self, t: &Tensor) -> Result<Tensor> {
        let (n, _, s, _) = t.dims4()?;
        Ok(t.transpose(1, 2)?.contiguous()?.reshape((n * s, self.width))?)
    }

    /// [`forward_with`](Self::forward_with) keeping the frozen tape (input and LoRA
    /// cotangents) when `keep_tape`, else none.
    pub fn forward(
        &self,
        x: &Tensor,
        shape: Shape,
        past: Option<&KeyValues>,
        lora: Option<&BlockLora>,
        keep_tape: bool,
    ) -> Result<BlockOutput> {
        self.forward_with(x, shape, past, lora, TapeMode::frozen(keep_tape))
    }

    /// Runs the block on rows `x: [N·S, D]`. `past` (keys/values `[1, H, P, hd]`) is
    /// prepended to every sequence's keys/values; with `causal`, position i of this call
    /// sits at absolute position P + i. `mode` says what the tape keeps.
    pub fn forward_with(
        &self,
        x: &Tensor,
        shape: Shape,
        past: Option<&KeyValues>,
        lora: Option<&BlockLora>,
        mode: TapeMode,
    ) -> Result<BlockOutput> {
        let before = past.map_or(Before::Nothing, Before::Past);
        self.forward_rows(x, shape, Rows::all(None, before), lora, mode)
    }

    /// [`forward_with`](Self::forward_with), causal, on packed rows `x: [R, D]`
    /// (`packing`'s layout): LayerNorms, projections and MLP run on the R rows only;
    /// attention sees each sequence padded to the longest with zero rows, which no real
    /// position sees under the causal mask. Output rows and the backward's cotangents
    /// are packed too.
    pub fn forward_packed(
        &self,
        x: &Tensor,
        packing: &Arc<Packing>,
        past: Option<&KeyValues>,
        lora: Option<&BlockLora>,
        mode: TapeMode,
    ) -> Result<BlockOutput> {
        let shape = Shape {
            n: packing.sequences(),
            s: packing.padded_len(),
            causal: true,
        };
        let before = past.map_or(Before::Nothing, Before::Past);
        self.forward_rows(x, shape, Rows::all(Some(packing), before), lora, mode)
    }

    /// [`forward_packed`](Self::forward_packed) for rows `x: [P + R, D]`: a prefix of P
    /// positions (one causal sequence) followed by `packing`'s R rows, whose sequences
    /// attend to the prefix as to a past. The projections and the MLP run on all P + R
    /// rows at once; the attention of each part is that of its own call. So the output
    /// rows and the backward's cotangents are those of the two calls (the prefix's, then
    /// the sequences' with the prefix's keys and values as their past) where every
    /// product gives a row the same bits at P rows as among P + R
    /// ([`rows_compute_alike`](super::matmul::rows_compute_alike), which the caller
    /// checks). Frozen weights only: no LoRA, no weight gradients (their sums over the
    /// rows would round differently).
    pub fn forward_prefixed(
        &self,
        x: &Tensor,
        prefix: usize,
        packing: &Arc<Packing>,
        mode: TapeMode,
    ) -> Result<BlockOutput> {
        self.prefixed(x, prefix, packing, mode, None)
    }

    /// [`forward_prefixed`](Self::forward_prefixed) for the output rows `rows` alone
    /// (indices into the P + R input rows), `[rows.len(), D]` in their order — what the
    /// text tower's last block is run for, since only each sequence's EOT row goes on.
    /// Queries, keys and values and the attention run for every row (the kept rows
    /// attend to all of them); the output projection, the MLP and their tapes only for
    /// the kept rows. Where every product gives a row the same bits among `rows.len()`
    /// rows as among P + R (the caller checks, as for the prefix), the kept rows and
    /// every input cotangent of [`backward`](Self::backward) (given cotangents of the
    /// kept rows alone) are those of [`forward_prefixed`](Self::forward_prefixed) with
    /// zero cotangents on the other rows.
    pub fn forward_prefixed_rows(
        &self,
        x: &Tensor,
        prefix: usize,
        packing: &Arc<Packing>,
        mode: TapeMode,
        rows: &Tensor,
    ) -> Result<BlockOutput> {
        self.prefixed(x, prefix, packing, mode, Some(rows))
    }

    fn prefixed(
        &self,
        x: &Tensor,
        prefix: usize,
        packing: &Arc<Packing>,
        mode: TapeMode,
        out_rows: Option<&Tensor>,
    ) -> Result<BlockOutput> {
        if prefix == 0 || mode.weights() {
            bail!("block forward with an own prefix: needs a prefix and frozen weights");
        }
        let shape = Shape {
            n: packing.sequences(),
            s: packing.padded_len(),
            causal: true,
        };
        let rows = Rows {
            packing: Some(packing),
            before: Before::OwnPrefix(prefix),
            out: out_rows,
        };
        self.forward_rows(x, shape, rows, None, mode)
    }

    fn forward_rows(
        &self,
        x: &Tensor,
        shape: Shape,
        rows_in: Rows,
        lora: Option<&BlockLora>,
        mode: TapeMode,
    ) -> Result<BlockOutput> {
        let Rows {
            packing,
            before,
            out: out_rows,
        } = rows_in;
        let Shape { n, s, .. } = shape;
        let d = self.width;
        let (past, prefix) = match before {
            Before::Nothing => (None, 0),
            Before::Past(kv) => (Some(kv), 0),
            Before::OwnPrefix(p) => (None, p),
        };
        let rows = prefix + packing.map_or(n * s, |p| p.rows());
        if x.dims() != [rows, d] {
            bail!(
                "block forward: input {:?}, expected [{rows}, {d}] ({n} sequences of {s} positions{})",
                x.dims(),
                if packing.is_some() { ", packed" } else { "" }
            );
        }
        let keep_tape = mode.keeps_tape();
        let weights = mode.weights();
        let lora_qkv = lora.is_some_and(BlockLora::adapts_qkv);
        let (a, ln1_tape) = if keep_tape {
            let (a, t) = self.ln1.forward_taped(x)?;
            (a, Some(t))
        } else {
            (self.ln1.forward(x)?, None)
        };
        let (qkv, mut lora_down) = self.project_qkv(&a, lora)?;
        let past_len = past.map_or(Ok(0), |p| p.k.dim(2))?;
        // The kernel with a past reads packed rows itself; the others take the padded
        // layout, padded and packed around them.
        let layout = packing.map(|p| &**p);
        let (qkv, o, attn_tape) = match past {
            _ if prefix > 0 => {
                let (o, tape) = self.attend_after_prefix(&qkv, prefix, shape, layout, keep_tape)?;
                (qkv, o, tape)
            }
            Some(pkv) if attention::applies(&[&qkv, &pkv.k, &pkv.v]) => {
                let shape = self.attention_shape(shape);
                let (o, probs) = attention_past::forward(&qkv, &pkv.k, &pkv.v, shape, layout, keep_tape)?;
                let tape = probs.map(|probs| AttentionTape::FusedPast {
                    qkv: qkv.clone(),
                    past: pkv.clone(),
                    probs,
                });
                (qkv, o, tape)
            }
            None if attention::applies(&[&qkv]) => {
                let qkv = padded(layout, &qkv)?;
                let (o, probs) = attention::forward(&qkv, self.attention_shape(shape), keep_tape)?;
                let tape = probs.map(|probs| AttentionTape::Fused {
                    qkv: qkv.clone(),
                    probs,
                });
                (qkv, packed(layout, &o)?, tape)
            }
            _ => {
                let qkv = padded(layout, &qkv)?;
                let (o, tape) = self.attention_composed(&qkv, shape, past)?;
                (qkv, packed(layout, &o)?, keep_tape.then_some(tape))
            }
        };
        // Past the attention only the kept rows go on (no LoRA, no weight tapes here).
        let kept_x;
        let (o, x) = match out_rows {
            Some(idx) => {
                kept_x = x.index_select(idx, 0)?;
                (o.index_select(idx, 0)?, &kept_x)
            }
            None => (o, x),
        };
        let h = match lora.and_then(|l| l.o.as_ref()) {
            Some(ad) => {
                let (delta, down) = lora_forward(ad, &o)?;
                lora_down[3] = Some(down);
                (x + (self.out.forward(&o)? + delta)?)?
            }
            None => self.out.forward_residual(&o, x)?,
        };
        let (b, ln2_tape) = if keep_tape {
            let (b, t) = self.ln2.forward_taped(&h)?;
            (b, Some(t))
        } else {
            (self.ln2.forward(&h)?, None)
        };
        let fc1_out = self.fc1.forward(&b)?;
        let act = quick_gelu(&fc1_out)?;
        let y = self.fc2.forward_residual(&act, &h)?;
        let lora_o = lora.is_some_and(|l| l.o.is_some());
        let tape = match (ln1_tape, ln2_tape, attn_tape) {
            (Some(ln1), Some(ln2), Some(attn)) => Some(BlockTape {
                shape,
                packing: packing.cloned(),
                prefix,
                past_len,
                weights,
                ln1,
                ln1_out: (lora_qkv || weights).then(|| a.clone()),
                attn,
                attn_out: (lora_o || weights).then(|| o.clone()),
                lora_down,
                out_rows: out_rows.cloned(),
                ln2,
                ln2_out: weights.then(|| b.clone()),
                fc1_out,
                act: weights.then_some(act),
            }),
            _ => None,
        };
        Ok(BlockOutput {
            y,
            tape,
            qkv,
            shape,
            packed: packing.is_some(),
            heads: self.heads,
        })
    }

    /// The attention of [`forward_prefixed`](Self::forward_prefixed)'s rows: the first
    /// `prefix` q/k/v rows as one causal sequence (the fused kernel, as
    /// [`forward_with`](Self::forward_with) runs it), then the packed sequences of
    /// `shape` attending to the prefix's keys and values (as
    /// [`forward_packed`](Self::forward_packed) with that past). Output rows `[P + R, D]`.
    fn attend_after_prefix(
        &self,
        qkv: &Tensor,
        prefix: usize,
        shape: Shape,
        packing: Option<&Packing>,
        keep_tape: bool,
    ) -> Result<(Tensor, Option<AttentionTape>)> {
        let rows = qkv.dim(0)?;
        let prefix_qkv = qkv.narrow(0, 0, prefix)?;
        let body_qkv = qkv.narrow(0, prefix, rows - prefix)?;
        if !attention::applies(&[&prefix_qkv, &body_qkv]) {
            bail!("block forward with an own prefix: the fused CPU attention does not apply");
        }
        let prefix_shape = Shape {
            n: 1,
            s: prefix,
            causal: true,
        };
        let (prefix_o, prefix_probs) =
            attention::forward(&prefix_qkv, self.attention_shape(prefix_shape), keep_tape)?;
        // As `BlockOutput::kv` hands the prefix's keys and values to the sequences' call.
        let past = KeyValues::of_rows(&prefix_qkv, 1, prefix, self.heads)?;
        let ash = self.attention_shape(shape);
        let (body_o, probs) = attention_past::forward(&body_qkv, &past.k, &past.v, ash, packing, keep_tape)?;
        let o = Tensor::cat(&[&prefix_o, &body_o], 0)?;
        let tape = match (prefix_probs, probs) {
            (Some(prefix_probs), Some(probs)) => Some(AttentionTape::Prefixed {
                prefix_qkv,
                prefix_probs,
                qkv: body_qkv,
                past,
                probs,
            }),
            _ => None,
        };
        Ok((o, tape))
    }

    /// The fused q/k/v rows `[M, 3D]` of the normalized rows `a: [M, D]`, with the LoRA
    /// deltas of `lora` on q, k and v added, and the adapters' down projections (for the
    /// backward) in slots 0–2.
    fn project_qkv(&self, a: &Tensor, lora: Option<&BlockLora>) -> Result<(Tensor, [Option<Tensor>; 4])> {
        let mut lora_down: [Option<Tensor>; 4] = [None, None, None, None];
        let Some(l) = lora.filter(|l| l.adapts_qkv()) else {
            return Ok((self.qkv.forward(a)?, lora_down));
        };
        let adapters = l.qkv();
        let bias_applies = self.qkv.bias.as_ref().is_none_or(|b| attention::applies(&[b]));
        if attention::applies(&[a, &self.qkv.weight]) && bias_applies {
            // One pass adds bias and deltas (`lora_rows`), the same bits.
            let mm = self.qkv.product(a)?;
            let mut ups = [None, None, None];
            for (i, ad) in adapters.into_iter().enumerate() {
                if let Some(ad) = ad {
                    let (up, down) = lora_up(ad, a)?;
                    ups[i] = Some(lora_rows::Up { up, scale: ad.scale });
                    lora_down[i] = Some(down);
                }
            }
            let qkv = lora_rows::qkv_with_lora(&mm, self.qkv.bias.as_ref(), ups)?;
            return Ok((qkv, lora_down));
        }
        let mut qkv = self.qkv.forward(a)?;
        let mut deltas = Vec::with_capacity(3);
        for (i, ad) in adapters.into_iter().enumerate() {
            deltas.push(match ad {
                Some(ad) => {
                    let (delta, down) = lora_forward(ad, a)?;
                    lora_down[i] = Some(down);
                    delta
                }
                None => Tensor::zeros((a.dim(0)?, self.width), qkv.dtype(), qkv.device())?,
            });
        }
        qkv = (qkv + Tensor::cat(&deltas, 1)?)?;
        Ok((qkv, lora_down))
    }

    /// The output rows of the first position of every sequence, `[N, D]`, bit for bit
    /// those of [`forward_with`](Self::forward_with) (no past, no tape) — what the last
    /// block of the image tower is run for, since only its class token goes on. Keys and
    /// values need every position, but the queries, the output projection and the MLP
    /// run for the first position only (and the few attention rows
    /// [`attention::first_query_rows`] asks for), where that keeps the bits: f32 on the
    /// CPU, bidirectional attention, no LoRA on the output projection, and row products
    /// that compute `N` rows as they compute `N·S` ([`rows_compute_alike`]). Otherwise
    /// the whole block runs and the rows are picked from its output.
    pub fn forward_first_rows(&self, x: &Tensor, shape: Shape, lora: Option<&BlockLora>) -> Result<Tensor> {
        let Shape { n, s, .. } = shape;
        let first = first_positions(n, s, x.device())?;
        let queries = self
            .first_rows_queries(shape, lora, x.device(), x.dtype())
            .filter(|_| x.is_contiguous());
        let Some(queries) = queries else {
            let y = self.forward_with(x, shape, None, lora, TapeMode::None)?.y;
            return Ok(y.index_select(&first, 0)?);
        };
        if x.dims() != [n * s, self.width] {
            bail!(
                "block forward: input {:?}, expected [{}, {}] ({n} sequences of {s} positions)",
                x.dims(),
                n * s,
                self.width
            );
        }
        let (qkv, _) = self.project_qkv(&self.ln1.forward(x)?, lora)?;
        let o = attention::forward_first_query(&qkv, self.attention_shape(shape), queries)?;
        let h = self.out.forward_residual(&o, &x.index_select(&first, 0)?)?;
        let act = quick_gelu(&self.fc1.forward(&self.ln2.forward(&h)?)?)?;
        self.fc2.forward_residual(&act, &h)
    }

    /// The attention queries per sequence that
    /// [`forward_first_rows`](Self::forward_first_rows) computes when it can run the first
    /// rows alone on contiguous input rows of `dtype` on `device`, else `None` (it then
    /// runs the whole block).
    pub fn first_rows_queries(
        &self,
        shape: Shape,
        lora: Option<&BlockLora>,
        device: &Device,
        dtype: DType,
    ) -> Option<usize> {
        let hidden = self.fc1.weight.dim(0).ok()?;
        let qkv_dropout = lora.is_some_and(|l| {
            l.qkv()
                .iter()
                .any(|ad| ad.as_ref().is_some_and(|ad| ad.dropout_mask.is_some()))
        });
        let applies = device.is_cpu()
            && dtype == DType::F32
            && !qkv_dropout
            && lora.is_none_or(|l| l.o.is_none())
            && row_products(self.width, hidden)[1..]
                .iter()
                .all(|&(out, k)| rows_compute_alike(out, k, shape.n));
        applies
            .then(|| attention::first_query_rows(self.attention_shape(shape)))
            .flatten()
    }

    fn attention_shape(&self, shape: Shape) -> AttentionShape {
        AttentionShape {
            n: shape.n,
            s: shape.s,
            heads: self.heads,
            width: self.width,
            causal: shape.causal,
        }
    }

    /// The attention core as a candle composition, attending to `past` when given:
    /// output rows `[N·S, D]` and the tape of the split layout.
    fn attention_composed(
        &self,
        qkv: &Tensor,
        shape: Shape,
        past: Option<&KeyValues>,
    ) -> Result<(Tensor, AttentionTape)> {
        let Shape { n, s, causal } = shape;
        let d = self.width;
        let q = self.split_heads(&qkv.narrow(1, 0, d)?, n, s)?;
        let k_own = self.split_heads(&qkv.narrow(1, d, d)?, n, s)?;
        let v_own = self.split_heads(&qkv.narrow(1, 2 * d, d)?, n, s)?;
        let past_len = past.map_or(Ok(0), |p| p.k.dim(2))?;
        let (keys, values) = match past {
            Some(p) => {
                let pk = p.k.broadcast_as((n, self.heads, past_len, self.head_dim()))?;
                let pv = p.v.broadcast_as((n, self.heads, past_len, self.head_dim()))?;
                (
                    Tensor::cat(&[&pk, &k_own], 2)?.contiguous()?,
                    Tensor::cat(&[&pv, &v_own], 2)?.contiguous()?,
                )
            }
            None => (k_own, v_own),
        };
        let scale = 1.0 / (self.head_dim() as f64).sqrt();
        let mut scores = (q.matmul(&keys.t()?)? * scale)?;
        if causal {
            scores = scores.broadcast_add(&causal_mask(past_len, s, scores.dtype(), scores.device())?)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = self.merge_heads(&probs.matmul(&values)?)?;
        Ok((
            o,
            AttentionTape::Split {
                q,
                keys,
                values,
                probs,
            },
        ))
    }

    /// Backward for K cotangents `dy: [K, N·S, D]` of the output. `d_own_kv` adds
    /// cotangents for this call's own keys/values (rows `[K, N·S, D]`), which arise when
    /// they served as another batch's past. `need_dx = false` skips the input cotangent
    /// (the first block of an encoder whose input is not trained). A tape kept with
    /// [`TapeMode::Weights`] also yields [`BlockGrad::weights`].
    pub fn backward(
        &self,
        tape: &BlockTape,
        dy: &Tensor,
        d_own_kv: Option<(&Tensor, &Tensor)>,
        lora: Option<&BlockLora>,
        need_dx: bool,
    ) -> Result<BlockGrad> {
        let dx = if need_dx { InputRows::All } else { InputRows::None };
        self.backward_to(tape, dy, d_own_kv, lora, dx)
    }

    /// [`backward`](Self::backward) with the input cotangent of the first `rows` input
    /// rows alone, `[K, rows, D]` — what the text tower's first block owes a prompt whose
    /// trained positions all lie in a shared prefix that ran first among the body's rows
    /// ([`forward_prefixed`](Self::forward_prefixed)). Without LoRA and weight tapes the
    /// q/k/v input VJP and the LayerNorm's run for those rows alone: the same bits where
    /// the products compute `K·rows` rows as they compute all (the caller checks,
    /// [`rows_compute_alike`]).
    pub fn backward_first_rows(&self, tape: &BlockTape, dy: &Tensor, rows: usize) -> Result<BlockGrad> {
        self.backward_to(tape, dy, None, None, InputRows::First(rows))
    }

    fn backward_to(
        &self,
        tape: &BlockTape,
        dy: &Tensor,
        d_own_kv: Option<(&Tensor, &Tensor)>,
        lora: Option<&BlockLora>,
        dx_rows: InputRows,
    ) -> Result<BlockGrad> {
        let need_dx = dx_rows != InputRows::None;
        let Shape { n, s, .. } = tape.shape;
        let (kk, m_out, d) = dy.dims3()?;
        let m = tape.prefix + tape.packing.as_ref().map_or(n * s, |p| p.rows());
        let out_len = tape.out_rows.as_ref().map_or(Ok(m), |r| r.dim(0))?;
        if m_out != out_len || d != self.width {
            bail!(
                "block backward: cotangent shape {:?} does not match the forward ({out_len} rows of {})",
                dy.dims(),
                self.width
            );
        }
        // Cotangents of the rows the output projection did not run for are zero.
        let all_rows = |t: Tensor| -> Result<Tensor> {
            match &tape.out_rows {
                Some(idx) => Ok(Tensor::zeros((kk, m, d), t.dtype(), t.device())?.index_add(idx, &t, 1)?),
                None => Ok(t),
            }
        };
        let mut grads = BlockLoraGrad::default();
        let kept = |t: &Option<Tensor>| -> Result<Tensor> {
            t.clone()
                .ok_or_else(|| anyhow::anyhow!("block tape lacks an activation kept for weights"))
        };
        // MLP branch.
        let d_act = self.fc2.backward_input(dy)?;
        let g_fc2 = tape
            .weights
            .then(|| self.fc2.weight_grad(&kept(&tape.act)?, dy))
            .transpose()?;
        let d_fc1 = quick_gelu_backward(&tape.fc1_out, &d_act)?;
        let g_fc1 = tape
            .weights
            .then(|| self.fc1.weight_grad(&kept(&tape.ln2_out)?, &d_fc1))
            .transpose()?;
        let d_b = self.fc1.backward_input(&d_fc1)?;
        let g_ln2 = tape
            .weights
            .then(|| self.ln2.param_grad(&tape.ln2, &d_b))
            .transpose()?;
        let dh = self.ln2.backward_residual(&tape.ln2, &d_b, dy)?;
        // Attention branch.
        let g_out = tape
            .weights
            .then(|| self.out.weight_grad(&kept(&tape.attn_out)?, &dh))
            .transpose()?;
        let mut d_o = self.out.backward_input(&dh)?;
        if let (Some(ad), Some(o)) = (lora.and_then(|l| l.o.as_ref()), tape.attn_out.as_ref()) {
            let down = tape.lora_down[3]
                .as_ref()
                .expect("tape keeps the LoRA down projection");
            let (dx_extra, g) = lora_backward(ad, o, down, &dh)?;
            d_o = (d_o + dx_extra)?;
            grads.o = Some(g);
        }
        let (d_o, dh) = (all_rows(d_o)?, all_rows(dh)?);
        // As in the forward: the kernel with a past takes packed rows, the others the
        // padded layout (cotangents padded, results packed).
        let packing = tape.packing.as_deref();
        let pad = |t: &Tensor| padded(packing, t);
        let (d_qkv, d_past) = match &tape.attn {
            AttentionTape::FusedPast { qkv, past, probs } => {
                let own = match d_own_kv {
                    Some((ek, ev)) => Some((ek.contiguous()?, ev.contiguous()?)),
                    None => None,
                };
                let g = attention_past::backward(
                    qkv,
                    &past.k,
                    &past.v,
                    probs,
                    &d_o.contiguous()?,
                    own.as_ref().map(|(k, v)| (k, v)),
                    self.attention_shape(tape.shape),
                    packing,
                )?;
                (g.d_qkv, Some((g.d_past_k, g.d_past_v)))
            }
            AttentionTape::Prefixed {
                prefix_qkv,
                prefix_probs,
                qkv,
                past,
                probs,
            } => {
                // The sequences' call first, then the prefix's with the cotangents of its
                // keys and values as that call's past added, as the two calls' backwards.
                let p = tape.prefix;
                let body_d_o = d_o.narrow(1, p, m - p)?.contiguous()?;
                let ash = self.attention_shape(tape.shape);
                let g =
                    attention_past::backward(qkv, &past.k, &past.v, probs, &body_d_o, None, ash, packing)?;
                let prefix_shape = Shape {
                    n: 1,
                    s: p,
                    causal: true,
                };
                let prefix_d_o = d_o.narrow(1, 0, p)?.contiguous()?;
                let pash = self.attention_shape(prefix_shape);
                let d_prefix = attention::backward(prefix_qkv, prefix_probs, &prefix_d_o, pash)?;
                let d_prefix = add_own_kv(&d_prefix, &g.d_past_k, &g.d_past_v)?;
                (Tensor::cat(&[&d_prefix, &g.d_qkv], 1)?, None)
            }
            AttentionTape::Fused { qkv, probs } => {
                let d_o = pad(&d_o)?.contiguous()?;
                let mut d_qkv = attention::backward(qkv, probs, &d_o, self.attention_shape(tape.shape))?;
                if let Some((ek, ev)) = d_own_kv {
                    d_qkv = add_own_kv(&d_qkv, &pad(ek)?, &pad(ev)?)?;
                }
                (packed(packing, &d_qkv)?, None)
            }
            AttentionTape::Split { .. } => {
                let d_o = pad(&d_o)?;
                let (dq, dk, dv, d_past) =
                    self.attention_backward(&tape.attn, tape.shape, tape.past_len, &d_o, kk)?;
                let (dk, dv) = match d_own_kv {
                    Some((ek, ev)) => ((dk + pad(ek)?)?, (dv + pad(ev)?)?),
                    None => (dk, dv),
                };
                (packed(packing, &Tensor::cat(&[&dq, &dk, &dv], 2)?)?, d_past)
            }
        };
        let g_qkv = tape
            .weights
            .then(|| self.qkv.weight_grad(&kept(&tape.ln1_out)?, &d_qkv))
            .transpose()?;
        let need_a = need_dx || tape.weights;
        // The first rows' input cotangents alone need only their rows of the q/k/v VJP
        // (unless LoRA or the weights' LayerNorm gradient read every row of it).
        let first_rows = match dx_rows {
            InputRows::First(r) if lora.is_none() && !tape.weights => Some(r),
            _ => None,
        };
        let mut d_a = match (need_a, first_rows) {
            (false, _) => None,
            (true, Some(r)) => Some(self.qkv.backward_input(&d_qkv.narrow(1, 0, r)?.contiguous()?)?),
            (true, None) => Some(self.qkv.backward_input(&d_qkv)?),
        };
        if let Some(l) = lora {
            // On the CPU in f32 each adapter reads its slice of the q/k/v cotangents in
            // place, and one pass adds the input cotangents (`lora_rows`), the same bits.
            let (kk, m) = (d_qkv.dim(0)?, d_qkv.dim(1)?);
            let mut masks = l
                .qkv()
                .into_iter()
                .filter_map(|ad| ad.as_ref().and_then(|ad| ad.dropout_mask.as_ref()));
            let fast = attention::applies(&[&d_qkv])
                && d_a.as_ref().is_none_or(|da| attention::applies(&[da]))
                && masks.all(|mk| attention::applies(&[mk]));
            let rows = fast.then(|| d_qkv.reshape((kk * m, 3 * d))).transpose()?;
            let mut parts = Vec::new();
            for (i, ad) in l.qkv().into_iter().enumerate() {
                if let Some(ad) = ad {
                    let a = tape.ln1_out.as_ref().expect("tape keeps ln1 output with LoRA");
                    let down = tape.lora_down[i]
                        .as_ref()
                        .expect("tape keeps the LoRA down projection");
                    let g = if let Some(rows) = &rows {
                        let dpart = rows.narrow(1, i * d, d)?;
                        let (dx, g) = lora_backward_rows(ad, a, down, &dpart, kk, d_a.is_some())?;
                        parts.extend(dx.map(|dx| lora_rows::InputPart {
                            dx,
                            mask: ad.dropout_mask.clone(),
                        }));
                        g
                    } else {
                        let dpart = &d_qkv.narrow(2, i * d, d)?.contiguous()?;
                        let (dx_extra, g) = lora_backward(ad, a, down, dpart)?;
                        if let Some(da) = d_a.as_mut() {
                            *da = (&*da + dx_extra)?;
                        }
                        g
                    };
                    match i {
                        0 => grads.q = Some(g),
                        1 => grads.k = Some(g),
                        _ => grads.v = Some(g),
                    }
                }
            }
            if let (Some(da), false) = (d_a.as_mut(), parts.is_empty()) {
                *da = lora_rows::add_input_parts(da, &parts)?;
            }
        }
        let weights = match (&d_a, g_qkv, g_out, g_ln2, g_fc1, g_fc2) {
            (Some(da), Some(qkv), Some(out), Some(ln2), Some(fc1), Some(fc2)) => Some(BlockWeightGrad {
                ln1: self.ln1.param_grad(&tape.ln1, da)?,
                qkv,
                out,
                ln2,
                fc1,
                fc2,
            }),
            _ => None,
        };
        let dx = match (d_a, dx_rows) {
            (Some(da), InputRows::All) => Some(self.ln1.backward_residual(&tape.ln1, &da, &dh)?),
            (Some(da), InputRows::First(r)) => {
                let first = |t: &Tensor| t.narrow(1, 0, r)?.contiguous();
                let da = if da.dim(1)? == r { da } else { first(&da)? };
                let ln1 = LayerNormTape {
                    x: tape.ln1.x.narrow(0, 0, r)?,
                };
                Some(self.ln1.backward_residual(&ln1, &da, &first(&dh)?)?)
            }
            _ => None,
        };
        Ok(BlockGrad {
            dx,
            d_past,
            lora: grads,
            weights,
        })
    }

    /// Attention core VJP of the composed (split) path, one cotangent at a time (the
    /// saved probabilities are shared). Returns dq, dk, dv as rows `[K, N·S, D]` and the
    /// past's cotangents `[K, P, D]`.
    #[allow(clippy::type_complexity)]
    fn attention_backward(
        &self,
        attn: &AttentionTape,
        shape: Shape,
        p: usize,
        d_o: &Tensor,
        kk: usize,
    ) -> Result<(Tensor, Tensor, Tensor, Option<(Tensor, Tensor)>)> {
        let AttentionTape::Split {
            q,
            keys,
            values,
            probs,
        } = attn
        else {
            bail!("block backward: the composed attention VJP needs the split tape");
        };
        let Shape { n, s, .. } = shape;
        let scale = 1.0 / (self.head_dim() as f64).sqrt();
        let mut dqs = Vec::with_capacity(kk);
        let mut dks = Vec::with_capacity(kk);
        let mut dvs = Vec::with_capacity(kk);
        let mut dpk = Vec::new();
        let mut dpv = Vec::new();
        for i in 0..kk {
            let d_out = self.split_heads(&d_o.get(i)?, n, s)?;
            let d_probs = d_out.matmul(&values.t()?)?;
            let d_values = probs.t()?.matmul(&d_out)?;
            let row_dot = (&d_probs * probs)?.sum_keepdim(D::Minus1)?;
            let d_scores = (probs.clone() * d_probs.broadcast_sub(&row_dot)?)?;
            let d_scores = (d_scores * scale)?;
            let dq = d_scores.matmul(keys)?;
            let d_keys = d_scores.t()?.matmul(q)?;
            dqs.push(self.merge_heads(&dq)?);
            if p > 0 {
                let own = |t: &Tensor| t.narrow(2, p, s);
                dks.push(self.merge_heads(&own(&d_keys)?)?);
                dvs.push(self.merge_heads(&own(&d_values)?)?);
                // Sum over the N sequences that shared the past: [1, H, P, hd] → [P, D].
                let past = |t: &Tensor| -> Result<Tensor> {
                    let summed = t.narrow(2, 0, p)?.sum_keepdim(0)?;
                    self.merge_heads(&summed)
                };
                dpk.push(past(&d_keys)?);
                dpv.push(past(&d_values)?);
            } else {
                dks.push(self.merge_heads(&d_keys)?);
                dvs.push(self.merge_heads(&d_values)?);
            }
        }
        let d_past = if p > 0 {
            Some((Tensor::stack(&dpk, 0)?, Tensor::stack(&dpv, 0)?))
        } else {
            None
        };
        Ok((
            Tensor::stack(&dqs, 0)?,
            Tensor::stack(&dks, 0)?,
            Tensor::stack(&dvs, 0)?,
            d_past,
        ))
    }
}

/// LoRA forward on rows `x: [M, in]`: returns `scale · (A x̃) Bᵀ` and the down
/// projection `A x̃` (x̃ = dropped-out x) for the backward.
fn lora_forward(ad: &Lora, x: &Tensor) -> Result<(Tensor, Tensor)> {
    let (up, down) = lora_up(ad, x)?;
    Ok(((up * ad.scale)?, down))
}

/// [`lora_forward`] before the scale: `(A x̃) Bᵀ` and `A x̃`.
fn lora_up(ad: &Lora, x: &Tensor) -> Result<(Tensor, Tensor)> {
    let down = matmul(&dropped(ad, x)?, &ad.a.t()?)?;
    Ok((matmul(&down, &ad.b.t()?)?, down))
}

/// LoRA VJP for cotangent rows `dy_rows: [K·M, out]` — any 2-D view, such as one slice
/// of the fused q/k/v cotangents read in place. Returns the input cotangent `d_down A`
/// `[K·M, in]` *before* the dropout mask when `want_dx` (the caller applies the mask:
/// [`lora_backward`], or [`lora_rows::add_input_parts`] in one pass), and the
/// per-cotangent gradients dB = s·dyᵀ(A x̃), dA = (s·dy B)ᵀ x̃.
fn lora_backward_rows(
    ad: &Lora,
    x: &Tensor,
    down: &Tensor,
    dy_rows: &Tensor,
    kk: usize,
    want_dx: bool,
) -> Result<(Option<Tensor>, LoraGrad)> {
    let m = x.dim(0)?;
    let per_cotangent = (0..kk)
        .map(|k| matmul(&dy_rows.narrow(0, k * m, m)?.t()?, down))
        .collect::<Result<Vec<_>>>()?;
    let db = (Tensor::stack(&per_cotangent, 0)? * ad.scale)?;
    let r = ad.a.dim(0)?;
    let d_down = (matmul(dy_rows, &ad.b)? * ad.scale)?;
    let da = outer_per_cotangent(&d_down.reshape((kk, m, r))?, &dropped(ad, x)?)?;
    let dx = want_dx.then(|| matmul(&d_down, &ad.a)).transpose()?;
    Ok((dx, LoraGrad { a: da, b: db }))
}

/// LoRA VJP for `dy: [K, M, out]`: the input cotangent `[K, M, in]` and per-cotangent
/// gradients dB = s·dyᵀ(A x̃), dA = (s·dy B)ᵀ x̃.
fn lora_backward(ad: &Lora, x: &Tensor, down: &Tensor, dy: &Tensor) -> Result<(Tensor, LoraGrad)> {
    let (kk, m, out) = dy.dims3()?;
    let (dx, g) = lora_backward_rows(ad, x, down, &dy.reshape((kk * m, out))?, kk, true)?;
    let mut dx = dx
        .expect("asked for the input cotangent")
        .reshape((kk, m, ad.a.dim(1)?))?;
    if let Some(mask) = &ad.dropout_mask {
        dx = dx.broadcast_mul(&mask.unsqueeze(0)?)?;
    }
    Ok((dx, g))
}

/// The adapter's input `x` after its dropout mask (x itself without one).
fn dropped(ad: &Lora, x: &Tensor) -> Result<Tensor> {
    Ok(match &ad.dropout_mask {
        Some(mask) => (x * mask)?,
        None => x.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ops::testutil::*;

    fn random_block(d: usize, heads: usize, seed: u64, dtype: DType) -> Block {
        let t = |shape: &[usize], k: u64, sc: f32| {
            rand_tensor(shape, seed * 100 + k, sc).to_dtype(dtype).unwrap()
        };
        let ln = |k: u64| LayerNorm {
            weight: (t(&[d], k, 0.3) + 1.0).unwrap(),
            bias: t(&[d], k + 1, 0.3),
            eps: 1e-5,
        };
        let lin = |o: usize, i: usize, k: u64| {
            Linear::new(t(&[o, i], k, 1.0 / (i as f32).sqrt()), Some(t(&[o], k + 1, 0.1)))
        };
        Block {
            ln1: ln(1),
            qkv: lin(3 * d, d, 3),
            out: lin(d, d, 5),
            ln2: ln(7),
            fc1: lin(4 * d, d, 9),
            fc2: lin(d, 4 * d, 11),
            heads,
            width: d,
        }
    }

    fn to64(b: &Block) -> Block {
        let c = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let lin = |l: &Linear| Linear::new(c(&l.weight), l.bias.as_ref().map(c));
        let ln = |l: &LayerNorm| LayerNorm {
            weight: c(&l.weight),
            bias: c(&l.bias),
            eps: l.eps,
        };
        Block {
            ln1: ln(&b.ln1),
            qkv: lin(&b.qkv),
            out: lin(&b.out),
            ln2: ln(&b.ln2),
            fc1: lin(&b.fc1),
            fc2: lin(&b.fc2),
            heads: b.heads,
            width: b.width,
        }
    }

    #[test]
    fn input_vjp_matches_finite_differences_causal_and_full() {
        let (n, s, d, h) = (3, 5, 8, 2);
        for causal in [true, false] {
            let blk = random_block(d, h, 1, DType::F32);
            let b64 = to64(&blk);
            let shape = Shape { n, s, causal };
            let x = rand_tensor(&[n * s, d], 2, 1.0);
            let out = blk.forward(&x, shape, None, None, true).unwrap();
            let dy = rand_tensor(&[2, n * s, d], 3, 1.0);
            let g = blk
                .backward(out.tape.as_ref().unwrap(), &dy, None, None, true)
                .unwrap();
            let dx = g.dx.unwrap();
            for k in 0..2 {
                let v = rand_tensor(&[n * s, d], 10 + k as u64, 1.0);
                let f = |x: &Tensor| b64.forward(x, shape, None, None, false).unwrap().y;
                let fd = fd_directional(
                    &f,
                    &x,
                    &v,
                    &dy.get(k).unwrap().to_dtype(DType::F64).unwrap(),
                    1e-5,
                );
                let an = dot(&dx.get(k).unwrap(), &v);
                assert!(
                    (fd - an).abs() < 1e-3 * (1.0 + an.abs()),
                    "causal={causal} k={k}: fd {fd} vs {an}"
                );
            }
        }
    }

    /// Every weight gradient of a block (K = 2 cotangents, summed) against central
    /// differences in f64, causal with a shared past and full; tolerance
    /// 1e-6 · (1 + |analytic|). Inputs-only tapes give the same outputs and cotangents.
    #[test]
    fn weight_gradients_match_finite_differences() {
        let (n, p, s, d, h) = (2, 2, 3, 8, 2);
        let mut worst = 0f64;
        for causal in [true, false] {
            let b64 = to64(&random_block(d, h, 4, DType::F32));
            let shape = Shape { n, s, causal };
            let x = rand_tensor(&[n * s, d], 70, 1.0).to_dtype(DType::F64).unwrap();
            let prefix = rand_tensor(&[p, d], 71, 1.0).to_dtype(DType::F64).unwrap();
            let dy = rand_tensor(&[2, n * s, d], 72, 1.0).to_dtype(DType::F64).unwrap();
            let w = (dy.get(0).unwrap() + dy.get(1).unwrap()).unwrap();
            let pre_shape = Shape { n: 1, s: p, causal };
            // The past only where it is meaningful (causal text); full attention plain.
            let run = |blk: &Block, mode: TapeMode| {
                let pre = causal.then(|| blk.forward_with(&prefix, pre_shape, None, None, mode).unwrap());
                let kv = pre.as_ref().map(|o| o.kv().unwrap());
                let out = blk.forward_with(&x, shape, kv.as_ref(), None, mode).unwrap();
                (pre, out)
            };
            let (pre, out) = run(&b64, TapeMode::Weights);
            let g = b64
                .backward(out.tape.as_ref().unwrap(), &dy, None, None, true)
                .unwrap();
            let mut wg = g.weights.clone().unwrap();
            if let Some(pre) = &pre {
                let (dk, dv) = g.d_past.as_ref().unwrap();
                let zeros = Tensor::zeros((2, p, d), DType::F64, &Device::Cpu).unwrap();
                let gp = b64
                    .backward(pre.tape.as_ref().unwrap(), &zeros, Some((dk, dv)), None, true)
                    .unwrap();
                wg = wg.add(gp.weights.as_ref().unwrap()).unwrap();
            }
            // Inputs-only tape: same output and input cotangent, no weight gradients.
            let (_, out_in) = run(&b64, TapeMode::Inputs);
            assert_eq!(max_abs_diff(&out_in.y, &out.y), 0.0);
            let g_in = b64
                .backward(out_in.tape.as_ref().unwrap(), &dy, None, None, true)
                .unwrap();
            assert!(g_in.weights.is_none());
            assert_eq!(
                max_abs_diff(g_in.dx.as_ref().unwrap(), g.dx.as_ref().unwrap()),
                0.0
            );
            let params: Vec<(&str, Tensor)> = vec![
                ("ln1.weight", wg.ln1.weight.clone()),
                ("ln1.bias", wg.ln1.bias.clone()),
                ("qkv.weight", wg.qkv.weight.clone()),
                ("qkv.bias", wg.qkv.bias.clone().unwrap()),
                ("out.weight", wg.out.weight.clone()),
                ("out.bias", wg.out.bias.clone().unwrap()),
                ("ln2.weight", wg.ln2.weight.clone()),
                ("ln2.bias", wg.ln2.bias.clone()),
                ("fc1.weight", wg.fc1.weight.clone()),
                ("fc1.bias", wg.fc1.bias.clone().unwrap()),
                ("fc2.weight", wg.fc2.weight.clone()),
                ("fc2.bias", wg.fc2.bias.clone().unwrap()),
            ];
            for (k, (name, grad)) in params.iter().enumerate() {
                let v = rand_tensor(grad.dims(), 80 + k as u64, 1.0)
                    .to_dtype(DType::F64)
                    .unwrap();
                let at = |t: f64| {
                    let mut b = b64.clone();
                    let slot = match *name {
                        "ln1.weight" => &mut b.ln1.weight,
                        "ln1.bias" => &mut b.ln1.bias,
                        "qkv.weight" => &mut b.qkv.weight,
                        "qkv.bias" => b.qkv.bias.as_mut().unwrap(),
                        "out.weight" => &mut b.out.weight,
                        "out.bias" => b.out.bias.as_mut().unwrap(),
                        "ln2.weight" => &mut b.ln2.weight,
                        "ln2.bias" => &mut b.ln2.bias,
                        "fc1.weight" => &mut b.fc1.weight,
                        "fc1.bias" => b.fc1.bias.as_mut().unwrap(),
                        "fc2.weight" => &mut b.fc2.weight,
                        _ => b.fc2.bias.as_mut().unwrap(),
                    };
                    *slot = (&*slot + (&v * t).unwrap()).unwrap();
                    dot(&run(&b, TapeMode::None).1.y, &w)
                };
                let eps = 1e-5;
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                let an = dot(grad, &v);
                let err = (fd - an).abs() / (1.0 + an.abs());
                worst = worst.max(err);
                assert!(err < 1e-6, "causal={causal} {name}: fd {fd} vs analytic {an}");
            }
        }
        println!("block weight gradients: worst relative finite-difference error {worst:e}");
    }

    /// The fused kernel for attention to a shared past gives the candle composition's
    /// numbers bit for bit: outputs, probabilities, q/k/v cotangents (with and without
    /// extra own key/value cotangents) and the past's cotangents, causal and full, at a
    /// few head layouts including the tiny fixture's and ViT-B/16's text tower.
    #[test]
    fn fused_past_attention_equals_the_composition_bit_for_bit() {
        let mut seed = 200;
        for (n, s, p, d, h) in [
            (3, 4, 5, 16, 4),
            (5, 3, 5, 64, 1),
            (4, 1, 2, 32, 2),
            (6, 5, 5, 512, 8),
        ] {
            let blk = random_block(d, h, 7, DType::F32);
            let hd = d / h;
            for causal in [true, false] {
                seed += 10;
                let shape = Shape { n, s, causal };
                let qkv = rand_tensor(&[n * s, 3 * d], seed, 1.0);
                let past = KeyValues {
                    k: rand_tensor(&[1, h, p, hd], seed + 1, 1.0),
                    v: rand_tensor(&[1, h, p, hd], seed + 2, 1.0),
                };
                let (o_ref, tape) = blk.attention_composed(&qkv, shape, Some(&past)).unwrap();
                let ash = blk.attention_shape(shape);
                let (o, probs) = attention_past::forward(&qkv, &past.k, &past.v, ash, None, true).unwrap();
                let probs = probs.unwrap();
                let AttentionTape::Split { probs: probs_ref, .. } = &tape else {
                    panic!("the composition keeps the split tape")
                };
                assert_eq!(
                    bits(&o),
                    bits(&o_ref),
                    "output, {n}×{s}+{p}, {h} heads, causal {causal}"
                );
                assert_eq!(bits(&probs), bits(probs_ref), "probabilities, causal {causal}");
                let (o_plain, none) =
                    attention_past::forward(&qkv, &past.k, &past.v, ash, None, false).unwrap();
                assert!(none.is_none());
                assert_eq!(
                    bits(&o_plain),
                    bits(&o),
                    "the output does not depend on keeping the tape"
                );
                let d_o = rand_tensor(&[2, n * s, d], seed + 3, 1.0);
                let (ek, ev) = (
                    rand_tensor(&[2, n * s, d], seed + 4, 1.0),
                    rand_tensor(&[2, n * s, d], seed + 5, 1.0),
                );
                for with_own in [false, true] {
                    let (dq, dk, dv, d_past) = blk.attention_backward(&tape, shape, p, &d_o, 2).unwrap();
                    let (dk, dv) = if with_own {
                        ((dk + &ek).unwrap(), (dv + &ev).unwrap())
                    } else {
                        (dk, dv)
                    };
                    let d_qkv_ref = Tensor::cat(&[&dq, &dk, &dv], 2).unwrap();
                    let (dpk_ref, dpv_ref) = d_past.unwrap();
                    let own = with_own.then_some((&ek, &ev));
                    let g = attention_past::backward(&qkv, &past.k, &past.v, &probs, &d_o, own, ash, None)
                        .unwrap();
                    let what = format!("{n}×{s}+{p}, {h} heads, causal {causal}, own {with_own}");
                    assert_eq!(bits(&g.d_qkv), bits(&d_qkv_ref), "q/k/v cotangents, {what}");
                    assert_eq!(bits(&g.d_past_k), bits(&dpk_ref), "past key cotangents, {what}");
                    assert_eq!(bits(&g.d_past_v), bits(&dpv_ref), "past value cotangents, {what}");
                }
            }
        }
    }

    /// A block with a past takes the fused past kernel for f32 CPU tensors, and its
    /// forward and backward give the composition's numbers (f64 runs the composition).
    #[test]
    fn a_block_with_a_past_takes_the_fused_past_kernel() {
        let (n, s, p, d, h) = (3, 4, 2, 16, 2);
        let blk = random_block(d, h, 9, DType::F32);
        let x = rand_tensor(&[n * s, d], 301, 1.0);
        let past = KeyValues {
            k: rand_tensor(&[1, h, p, d / h], 302, 1.0),
            v: rand_tensor(&[1, h, p, d / h], 303, 1.0),
        };
        let shape = Shape { n, s, causal: true };
        let f = blk.forward(&x, shape, Some(&past), None, true).unwrap();
        assert!(matches!(
            f.tape.as_ref().unwrap().attn,
            AttentionTape::FusedPast { .. }
        ));
        let dy = rand_tensor(&[2, n * s, d], 304, 1.0);
        let g = blk
            .backward(f.tape.as_ref().unwrap(), &dy, None, None, true)
            .unwrap();
        let c = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let b64 = to64(&blk);
        let past64 = KeyValues {
            k: c(&past.k),
            v: c(&past.v),
        };
        let f64_ = b64.forward(&c(&x), shape, Some(&past64), None, true).unwrap();
        assert!(matches!(
            f64_.tape.as_ref().unwrap().attn,
            AttentionTape::Split { .. }
        ));
        let g64 = b64
            .backward(f64_.tape.as_ref().unwrap(), &c(&dy), None, None, true)
            .unwrap();
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let e = relative_diff(a, b);
            assert!(e < 1e-5, "{what}: relative error {e}");
        };
        close(&f.y, &f64_.y, "output");
        close(
            g.dx.as_ref().unwrap(),
            g64.dx.as_ref().unwrap(),
            "input cotangent",
        );
        let (dpk, dpv) = g.d_past.unwrap();
        let (dpk64, dpv64) = g64.d_past.unwrap();
        close(&dpk, &dpk64, "past keys");
        close(&dpv, &dpv64, "past values");
    }

    /// The fused f32 attention kernel (taken for f32 CPU tensors without a past) agrees
    /// with the candle composition (taken in f64) on outputs, input cotangents, LoRA and
    /// weight gradients, causal and full, for two cotangents.
    #[test]
    fn fused_attention_matches_the_composition() {
        let (n, s, d, h, r) = (3, 7, 16, 4, 2);
        let blk = random_block(d, h, 5, DType::F32);
        let b64 = to64(&blk);
        let mk = |k: u64| Lora {
            a: rand_tensor(&[r, d], 90 + k, 0.5),
            b: rand_tensor(&[d, r], 95 + k, 0.5),
            scale: 2.0,
            dropout_mask: None,
        };
        let lora = BlockLora {
            q: Some(mk(1)),
            k: None,
            v: Some(mk(2)),
            o: Some(mk(3)),
        };
        let c = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let lora64 = BlockLora {
            q: lora.q.as_ref().map(|l| Lora {
                a: c(&l.a),
                b: c(&l.b),
                ..l.clone()
            }),
            k: None,
            v: lora.v.as_ref().map(|l| Lora {
                a: c(&l.a),
                b: c(&l.b),
                ..l.clone()
            }),
            o: lora.o.as_ref().map(|l| Lora {
                a: c(&l.a),
                b: c(&l.b),
                ..l.clone()
            }),
        };
        let x = rand_tensor(&[n * s, d], 91, 1.0);
        let dy = rand_tensor(&[2, n * s, d], 92, 1.0);
        for causal in [true, false] {
            let shape = Shape { n, s, causal };
            let f = blk
                .forward_with(&x, shape, None, Some(&lora), TapeMode::Weights)
                .unwrap();
            assert!(matches!(
                f.tape.as_ref().unwrap().attn,
                AttentionTape::Fused { .. }
            ));
            let g = blk
                .backward(f.tape.as_ref().unwrap(), &dy, None, Some(&lora), true)
                .unwrap();
            let f64_ = b64
                .forward_with(&c(&x), shape, None, Some(&lora64), TapeMode::Weights)
                .unwrap();
            assert!(matches!(
                f64_.tape.as_ref().unwrap().attn,
                AttentionTape::Split { .. }
            ));
            let g64 = b64
                .backward(f64_.tape.as_ref().unwrap(), &c(&dy), None, Some(&lora64), true)
                .unwrap();
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let e = relative_diff(a, b);
                assert!(e < 1e-5, "causal={causal} {what}: relative difference {e:e}");
            };
            close(&f.y, &f64_.y, "output");
            close(
                g.dx.as_ref().unwrap(),
                g64.dx.as_ref().unwrap(),
                "input cotangent",
            );
            close(
                &g.lora.q.as_ref().unwrap().a,
                &g64.lora.q.as_ref().unwrap().a,
                "LoRA q.a",
            );
            close(
                &g.lora.v.as_ref().unwrap().b,
                &g64.lora.v.as_ref().unwrap().b,
                "LoRA v.b",
            );
            let (w, w64) = (g.weights.unwrap(), g64.weights.unwrap());
            close(&w.qkv.weight, &w64.qkv.weight, "qkv weight");
            close(
                w.qkv.bias.as_ref().unwrap(),
                w64.qkv.bias.as_ref().unwrap(),
                "qkv bias",
            );
            close(&w.ln1.weight, &w64.ln1.weight, "ln1 weight");
            close(&f.kv().unwrap().v, &f64_.kv().unwrap().v, "own values");
        }
    }

    /// A batch attending to a shared past gives the same outputs and cotangents as the
    /// same tokens run as one long sequence per batch element.
    #[test]
    fn past_matches_concatenated_sequence() {
        let (n, p, s, d, h) = (3, 2, 4, 8, 2);
        let blk = random_block(d, h, 2, DType::F32);
        let prefix = rand_tensor(&[p, d], 20, 1.0);
        let body = rand_tensor(&[n, s, d], 21, 1.0);
        // plain: [prefix ; body_n] as one sequence each
        let full = Tensor::cat(
            &[&prefix.unsqueeze(0).unwrap().repeat((n, 1, 1)).unwrap(), &body],
            1,
        )
        .unwrap();
        let plain = blk
            .forward(
                &full.reshape((n * (p + s), d)).unwrap(),
                Shape {
                    n,
                    s: p + s,
                    causal: true,
                },
                None,
                None,
                true,
            )
            .unwrap();
        // shared: prefix once, then the bodies attending to it
        let pre = blk
            .forward(
                &prefix,
                Shape {
                    n: 1,
                    s: p,
                    causal: true,
                },
                None,
                None,
                true,
            )
            .unwrap();
        let suf = blk
            .forward(
                &body.reshape((n * s, d)).unwrap(),
                Shape { n, s, causal: true },
                Some(&pre.kv().unwrap()),
                None,
                true,
            )
            .unwrap();
        let plain_body = plain.y.reshape((n, p + s, d)).unwrap().narrow(1, p, s).unwrap();
        assert!(max_abs_diff(&plain_body, &suf.y.reshape((n, s, d)).unwrap()) < 1e-5);
        // cotangents only on the body outputs
        let dy_body = rand_tensor(&[2, n, s, d], 22, 1.0);
        let dy_plain = Tensor::cat(
            &[
                &Tensor::zeros((2, n, p, d), DType::F32, &Device::Cpu).unwrap(),
                &dy_body,
            ],
            2,
        )
        .unwrap();
        let gp = blk
            .backward(
                plain.tape.as_ref().unwrap(),
                &dy_plain.reshape((2, n * (p + s), d)).unwrap(),
                None,
                None,
                true,
            )
            .unwrap();
        let gs = blk
            .backward(
                suf.tape.as_ref().unwrap(),
                &dy_body.reshape((2, n * s, d)).unwrap(),
                None,
                None,
                true,
            )
            .unwrap();
        let (dpk, dpv) = gs.d_past.as_ref().unwrap();
        let gpre = blk
            .backward(
                pre.tape.as_ref().unwrap(),
                &Tensor::zeros((2, p, d), DType::F32, &Device::Cpu).unwrap(),
                Some((dpk, dpv)),
                None,
                true,
            )
            .unwrap();
        let dplain = gp.dx.unwrap().reshape((2, n, p + s, d)).unwrap();
        assert!(
            max_abs_diff(
                &dplain.narrow(2, p, s).unwrap(),
                &gs.dx.unwrap().reshape((2, n, s, d)).unwrap()
            ) < 1e-5
        );
        let dprefix_plain = dplain.narrow(2, 0, p).unwrap().sum(1).unwrap();
        assert!(max_abs_diff(&dprefix_plain, &gpre.dx.unwrap()) < 1e-5);
    }

    #[test]
    fn lora_gradients_match_finite_differences() {
        let (n, s, d, h, r) = (2, 4, 8, 2, 3);
        let blk = random_block(d, h, 3, DType::F32);
        let mask = rand_tensor(&[n * s, d], 30, 1.0)
            .ge(-0.3)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .affine(1.0 / 0.75, 0.0)
            .unwrap();
        let mk = |k: u64, with_mask: bool| Lora {
            a: rand_tensor(&[r, d], 40 + k, 0.5),
            b: rand_tensor(&[d, r], 50 + k, 0.5),
            scale: 16.0 / (r as f64).sqrt(),
            dropout_mask: with_mask.then(|| mask.clone()),
        };
        let lora = BlockLora {
            q: Some(mk(1, true)),
            k: Some(mk(2, false)),
            v: Some(mk(3, true)),
            o: Some(mk(4, false)),
        };
        let shape = Shape { n, s, causal: true };
        let x = rand_tensor(&[n * s, d], 31, 1.0);
        let out = blk.forward(&x, shape, None, Some(&lora), true).unwrap();
        let dy = rand_tensor(&[2, n * s, d], 32, 1.0);
        let g = blk
            .backward(out.tape.as_ref().unwrap(), &dy, None, Some(&lora), true)
            .unwrap();
        let b64 = to64(&blk);
        let lora64 = |l: &BlockLora| {
            let c = |o: &Option<Lora>| {
                o.as_ref().map(|a| Lora {
                    a: a.a.to_dtype(DType::F64).unwrap(),
                    b: a.b.to_dtype(DType::F64).unwrap(),
                    scale: a.scale,
                    dropout_mask: a.dropout_mask.as_ref().map(|m| m.to_dtype(DType::F64).unwrap()),
                })
            };
            BlockLora {
                q: c(&l.q),
                k: c(&l.k),
                v: c(&l.v),
                o: c(&l.o),
            }
        };
        let x64 = x.to_dtype(DType::F64).unwrap();
        let k = 1;
        let w = dy.get(k).unwrap().to_dtype(DType::F64).unwrap();
        // perturb A of q and B of o
        for which in ["q.a", "o.b", "v.a", "k.b"] {
            let grad = match which {
                "q.a" => g.lora.q.as_ref().unwrap().a.get(k).unwrap(),
                "o.b" => g.lora.o.as_ref().unwrap().b.get(k).unwrap(),
                "v.a" => g.lora.v.as_ref().unwrap().a.get(k).unwrap(),
                _ => g.lora.k.as_ref().unwrap().b.get(k).unwrap(),
            };
            let v = rand_tensor(grad.dims(), 60, 1.0);
            let f = |p: &Tensor| {
                let mut l = lora64(&lora);
                match which {
                    "q.a" => l.q.as_mut().unwrap().a = p.clone(),
                    "o.b" => l.o.as_mut().unwrap().b = p.clone(),
                    "v.a" => l.v.as_mut().unwrap().a = p.clone(),
                    _ => l.k.as_mut().unwrap().b = p.clone(),
                }
                b64.forward(&x64, shape, None, Some(&l), false).unwrap().y
            };
            let base = match which {
                "q.a" => &lora.q.as_ref().unwrap().a,
                "o.b" => &lora.o.as_ref().unwrap().b,
                "v.a" => &lora.v.as_ref().unwrap().a,
                _ => &lora.k.as_ref().unwrap().b,
            };
            let fd = fd_directional(&f, base, &v, &w, 1e-5);
            let an = dot(&grad, &v);
            assert!(
                (fd - an).abs() < 1e-3 * (1.0 + an.abs()),
                "{which}: fd {fd} vs {an}"
            );
        }
        // input cotangent with LoRA present
        let v = rand_tensor(&[n * s, d], 61, 1.0);
        let f = |x: &Tensor| {
            b64.forward(x, shape, None, Some(&lora64(&lora)), false)
                .unwrap()
                .y
        };
        let fd = fd_directional(&f, &x, &v, &w, 1e-5);
        let an = dot(&g.dx.unwrap().get(k).unwrap(), &v);
        assert!((fd - an).abs() < 1e-3 * (1.0 + an.abs()), "dx: fd {fd} vs {an}");
    }

    /// The first rows alone (the last block of the image tower without a tape) have the
    /// bits of the whole block's rows at those positions, with and without LoRA on q, k
    /// and v, at batch sizes where the shortcut runs and where it falls back (one image;
    /// LoRA on the output projection).
    #[test]
    fn first_rows_alone_give_the_whole_blocks_bits() {
        let (d, s) = (128, 197);
        let blk = random_block(d, 2, 41, DType::F32);
        let adapter = |k: u64| {
            Some(Lora {
                a: rand_tensor(&[8, d], 300 + k, 0.1),
                b: rand_tensor(&[d, 8], 310 + k, 0.1),
                scale: 16.0 / 8f64.sqrt(),
                dropout_mask: None,
            })
        };
        let qkv_lora = BlockLora {
            q: adapter(1),
            k: adapter(2),
            v: adapter(3),
            o: None,
        };
        let o_lora = BlockLora {
            o: adapter(4),
            ..qkv_lora.clone()
        };
        for (n, lora, shortcut) in [
            (16, None, true),
            (3, None, true),
            (5, Some(&qkv_lora), true),
            (1, None, false),
            (4, Some(&o_lora), false),
        ] {
            let shape = Shape { n, s, causal: false };
            let x = rand_tensor(&[n * s, d], 50 + n as u64, 1.0);
            assert_eq!(
                blk.first_rows_queries(shape, lora, x.device(), x.dtype())
                    .is_some(),
                shortcut,
                "n {n}: shortcut"
            );
            let first: Vec<u32> = (0..n).map(|i| (i * s) as u32).collect();
            let whole = blk
                .forward_with(&x, shape, None, lora, TapeMode::None)
                .unwrap()
                .y
                .index_select(&Tensor::new(first, &Device::Cpu).unwrap(), 0)
                .unwrap();
            let alone = blk.forward_first_rows(&x, shape, lora).unwrap();
            assert_eq!(bits(&alone), bits(&whole), "n {n}, LoRA {}", lora.is_some());
        }
    }
}

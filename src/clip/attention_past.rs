//! Attention to a shared past on the CPU, fused: N sequences that each attend to the same
//! P past positions (the text encoder's prompt prefix, computed once) and to their own S
//! positions, and its VJP, one (sequence, head) per parallel task.
//!
//! Unlike [`super::attention`], this kernel keeps the candle composition's numbers bit for
//! bit (test `fused_past_attention_equals_the_composition_bit_for_bit` in
//! [`super::block`]): each task lays its operands out as the composition's contiguous
//! head-major tensors, makes the same `gemm` calls on them, scales and masks in the same
//! order, and uses candle's own row max and row sum and the standard library's `exp`, as
//! `softmax_last_dim` does; the past's cotangents are summed over the sequences in their
//! order, as `sum_keepdim(0)` does. What it leaves out is the composition's overhead:
//! head split/merge copies, the past broadcast to every sequence, ~20 tensor operations
//! each handed to the thread pool, and a threaded `gemm` call per tiny per-head matrix.

use anyhow::{bail, Result};
use candle_core::cpu::kernels::VecOps;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::attention::{probs_block, small_gemm, AttentionShape, F32View, SharedOut};
use super::packing::Packing;

/// The scale of the scores as the composition rounds it: 1/√hd in f64, then to f32.
fn score_scale(head_dim: usize) -> f32 {
    (1.0 / (head_dim as f64).sqrt()) as f32
}

/// One head's operands, laid out as the composition's contiguous tensors: queries
/// `[S, hd]`, keys and values `[P+S, hd]` with the past first.
struct HeadOperands {
    q: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl HeadOperands {
    /// Empty buffers, sized by the first [`gather`](Self::gather).
    fn new() -> Self {
        HeadOperands {
            q: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Gathers sequence `seq`, head `h` from the q/k/v rows `x` (`rows`' layout) and the
    /// past `pk`, `pv: [H, P, hd]` into these buffers (reused from task to task, so that
    /// a task allocates nothing); a packed sequence's padding rows are zero.
    #[allow(clippy::too_many_arguments)]
    fn gather(
        &mut self,
        x: &[f32],
        pk: &[f32],
        pv: &[f32],
        shape: AttentionShape,
        rows: Rows,
        past: usize,
        seq: usize,
        h: usize,
    ) {
        let AttentionShape { s, width, .. } = shape;
        let hd = width / shape.heads;
        let t = past + s;
        let HeadOperands { q, keys, values } = self;
        q.resize(s * hd, 0.0);
        keys.resize(t * hd, 0.0);
        values.resize(t * hd, 0.0);
        let head_past = h * past * hd..(h + 1) * past * hd;
        keys[..past * hd].copy_from_slice(&pk[head_past.clone()]);
        values[..past * hd].copy_from_slice(&pv[head_past]);
        let mut len = 0;
        for i in 0..s {
            let Some(r) = rows.row(seq, i) else { break };
            let row = &x[r * 3 * width..][..3 * width];
            q[i * hd..(i + 1) * hd].copy_from_slice(&row[h * hd..][..hd]);
            keys[(past + i) * hd..][..hd].copy_from_slice(&row[width + h * hd..][..hd]);
            values[(past + i) * hd..][..hd].copy_from_slice(&row[2 * width + h * hd..][..hd]);
            len = i + 1;
        }
        q[len * hd..].fill(0.0);
        keys[(past + len) * hd..].fill(0.0);
        values[(past + len) * hd..].fill(0.0);
    }
}

/// Where each sequence's positions sit among the rows: `[N·S]` padded, or packed.
#[derive(Clone, Copy)]
struct Rows<'a> {
    s: usize,
    packing: Option<&'a Packing>,
}

impl Rows<'_> {
    /// The row of position `i` of sequence `seq`; none for a packed sequence's padding.
    fn row(&self, seq: usize, i: usize) -> Option<usize> {
        match self.packing {
            Some(p) => p.row(seq, i),
            None => Some(seq * self.s + i),
        }
    }

    fn count(&self, n: usize) -> usize {
        self.packing.map_or(n * self.s, Packing::rows)
    }
}

/// Checks the shapes shared by forward and backward; returns P and the row layout.
fn check<'a>(
    qkv: &Tensor,
    past_k: &Tensor,
    past_v: &Tensor,
    shape: AttentionShape,
    packing: Option<&'a Packing>,
) -> Result<(usize, Rows<'a>)> {
    let AttentionShape {
        n, s, heads, width, ..
    } = shape;
    if heads == 0 || width % heads != 0 {
        bail!("attention with a past: width {width} does not split into {heads} heads");
    }
    let hd = width / heads;
    let past = past_k.dim(2)?;
    if let Some(p) = packing {
        if !shape.causal {
            bail!("attention with a past: packed rows need the causal mask");
        }
        if (p.sequences(), p.padded_len()) != (n, s) {
            bail!(
                "attention with a past: packing of {} sequences of up to {}, expected {n} of {s}",
                p.sequences(),
                p.padded_len()
            );
        }
    }
    let rows = Rows { s, packing };
    if qkv.dims() != [rows.count(n), 3 * width] {
        bail!(
            "attention with a past: q/k/v rows {:?}, expected [{}, {}]",
            qkv.dims(),
            rows.count(n),
            3 * width
        );
    }
    for (what, t) in [("keys", past_k), ("values", past_v)] {
        if t.dims() != [1, heads, past, hd] {
            bail!(
                "attention with a past: past {what} {:?}, expected [1, {heads}, {past}, {hd}]",
                t.dims()
            );
        }
    }
    Ok((past, rows))
}

/// Forward: `qkv: [N·S, 3D]` attending to `past_k`, `past_v: [1, H, P, hd]` → output rows
/// `[N·S, D]` and, when `keep_probs`, the probabilities `[N, H, S, P+S]`. With `causal`,
/// own position i sees the past and own positions ≤ i. With `packing` (causal only) the
/// q/k/v and output rows are packed (R instead of N·S) and each sequence is computed as
/// if padded to S with zero rows — the padded layout's numbers for every real row.
pub fn forward(
    qkv: &Tensor,
    past_k: &Tensor,
    past_v: &Tensor,
    shape: AttentionShape,
    packing: Option<&Packing>,
    keep_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (past, rows) = check(qkv, past_k, past_v, shape, packing)?;
    let AttentionShape {
        n,
        s,
        heads,
        width,
        causal,
    } = shape;
    let hd = width / heads;
    let t = past + s;
    let scale = score_scale(hd);
    let mut out = vec![0f32; rows.count(n) * width];
    let mut probs = vec![0f32; if keep_probs { n * heads * s * t } else { 0 }];
    let (o_ptr, p_ptr) = (SharedOut(out.as_mut_ptr()), SharedOut(probs.as_mut_ptr()));
    let (xv, kv, vv) = (F32View::of(qkv)?, F32View::of(past_k)?, F32View::of(past_v)?);
    let (x, pk, pv) = (xv.data(), kv.data(), vv.data());
    // Each worker reuses one set of buffers for all its tasks (every gemm overwrites
    // its output; `gather` rewrites every operand cell).
    let buffers = || (HeadOperands::new(), Vec::new(), vec![0f32; s * hd]);
    (0..n * heads)
        .into_par_iter()
        .for_each_init(buffers, |(ops, scratch, o), task| {
            let (seq, h) = (task / heads, task % heads);
            ops.gather(x, pk, pv, shape, rows, past, seq, h);
            // SAFETY: task `task` owns probability block `task` (s·t cells).
            let p = unsafe { probs_block(keep_probs.then_some(p_ptr), task, s * t, scratch) };
            // SAFETY: every operand is a contiguous buffer of this task with the extents
            // given; q kᵀ reads the keys transposed (row stride 1, column stride hd).
            unsafe {
                small_gemm(
                    (s, t, hd),
                    (p.as_mut_ptr(), t as isize, 1),
                    (ops.q.as_ptr(), hd as isize, 1),
                    (ops.keys.as_ptr(), 1, hd as isize),
                    1.0,
                    false,
                );
            }
            for (i, row) in p.chunks_mut(t).enumerate() {
                // `scores * scale` (candle's affine: v · mul + add), then the mask's + 0 / + −∞.
                for (j, v) in row.iter_mut().enumerate() {
                    *v = *v * scale + 0.0;
                    if causal {
                        *v += if j <= past + i { 0.0 } else { f32::NEG_INFINITY };
                    }
                }
                softmax_row(row);
            }
            // SAFETY: as above.
            unsafe {
                small_gemm(
                    (s, hd, t),
                    (o.as_mut_ptr(), hd as isize, 1),
                    (p.as_ptr(), t as isize, 1),
                    (ops.values.as_ptr(), hd as isize, 1),
                    1.0,
                    false,
                );
            }
            for (i, o_row) in o.chunks(hd).enumerate() {
                let Some(r) = rows.row(seq, i) else { break };
                // SAFETY: the output cells of this sequence's rows in this head's columns
                // belong to this task alone.
                unsafe {
                    let dst = o_ptr.at(r * width + h * hd);
                    std::ptr::copy_nonoverlapping(o_row.as_ptr(), dst, hd);
                }
            }
        });
    let out = Tensor::from_vec(out, (rows.count(n), width), &Device::Cpu)?;
    let probs = keep_probs
        .then(|| Tensor::from_vec(probs, (n, heads, s, t), &Device::Cpu))
        .transpose()?;
    Ok((out, probs))
}

/// candle's `softmax_last_dim` on one row: candle's row max, `exp(v − max)`, candle's
/// row sum, then division.
fn softmax_row(row: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    // SAFETY: `row` holds `row.len()` > 0 cells.
    unsafe { f32::vec_reduce_max(row.as_ptr(), &mut max, row.len()) };
    row.iter_mut().for_each(|v| *v = (*v - max).exp());
    let mut sum = 0f32;
    // SAFETY: as above.
    unsafe { f32::vec_reduce_sum(row.as_ptr(), &mut sum, row.len()) };
    row.iter_mut().for_each(|v| *v /= sum);
}

/// Cotangents produced by [`backward`].
pub struct PastGrad {
    /// W.r.t. the q/k/v rows, `[K, N·S, 3D]` (`[K, R, 3D]` packed).
    pub d_qkv: Tensor,
    /// W.r.t. the past keys as rows `[K, P, D]`, summed over the N sequences.
    pub d_past_k: Tensor,
    /// W.r.t. the past values as rows `[K, P, D]`, summed over the N sequences.
    pub d_past_v: Tensor,
}

/// One task's work buffers, reused for each cotangent (every gemm overwrites its output).
struct BackwardScratch {
    g: Vec<f32>,
    ds: Vec<f32>,
    d_values: Vec<f32>,
    dq: Vec<f32>,
    d_keys: Vec<f32>,
    prod: Vec<f32>,
}

/// VJP for K cotangents `d_out: [K, N·S, D]` of [`forward`]'s output, given its
/// probabilities. `d_own_kv` (rows `[K, N·S, D]` each) is added to the cotangents of
/// this call's own keys and values, as the composition adds it. With `packing` every
/// row argument and result is packed (R rows instead of N·S), as in [`forward`].
#[allow(clippy::too_many_arguments)]
pub fn backward(
    qkv: &Tensor,
    past_k: &Tensor,
    past_v: &Tensor,
    probs: &Tensor,
    d_out: &Tensor,
    d_own_kv: Option<(&Tensor, &Tensor)>,
    shape: AttentionShape,
    packing: Option<&Packing>,
) -> Result<PastGrad> {
    let (past, rows) = check(qkv, past_k, past_v, shape, packing)?;
    let AttentionShape {
        n, s, heads, width, ..
    } = shape;
    let hd = width / heads;
    let t = past + s;
    let kk = d_out.dim(0)?;
    let r = rows.count(n);
    if d_out.dims() != [kk, r, width] || probs.dims() != [n, heads, s, t] {
        bail!(
            "attention with a past, backward: cotangent {:?} and probabilities {:?} for {r} rows of {n} × {s}, {heads} heads, {past} past positions",
            d_out.dims(),
            probs.dims()
        );
    }
    if let Some((ek, ev)) = d_own_kv {
        if ek.dims() != d_out.dims() || ev.dims() != d_out.dims() {
            bail!(
                "attention with a past, backward: own key/value cotangents {:?} / {:?}, expected {:?}",
                ek.dims(),
                ev.dims(),
                d_out.dims()
            );
        }
    }
    let scale = score_scale(hd);
    // Both buffers start unfilled, not zeroed (the past's parts are megabytes for a few
    // microseconds of work per task): the tasks below write every cell, and only then do
    // the vectors take their lengths.
    let d_qkv_len = kk * r * 3 * width;
    let mut d_qkv: Vec<f32> = Vec::with_capacity(d_qkv_len);
    // Per (cotangent, sequence, head) past cotangents `[P, hd]` for keys and values,
    // summed over sequences below.
    let parts_len = 2 * kk * n * heads * past * hd;
    let mut past_parts: Vec<f32> = Vec::with_capacity(parts_len);
    let (d_ptr, pp_ptr) = (SharedOut(d_qkv.as_mut_ptr()), SharedOut(past_parts.as_mut_ptr()));
    let (xv, kv, vv) = (F32View::of(qkv)?, F32View::of(past_k)?, F32View::of(past_v)?);
    let (pr_v, dy_v) = (F32View::of(probs)?, F32View::of(d_out)?);
    let own = match d_own_kv {
        Some((ek, ev)) => Some((F32View::of(ek)?, F32View::of(ev)?)),
        None => None,
    };
    let (x, pk, pv, pr, dy) = (xv.data(), kv.data(), vv.data(), pr_v.data(), dy_v.data());
    let own = own.as_ref().map(|(a, b)| (a.data(), b.data()));
    // A sequence's rows in this layout (a packed one stops before its padding).
    let own_rows = |seq: usize| (0..s).map_while(move |i| rows.row(seq, i).map(|row| (i, row)));
    // One task per (sequence, head): its operands are gathered once for all cotangents.
    // Each worker reuses one set of buffers for all its tasks: the gemms overwrite their
    // outputs, `gather` rewrites every operand cell, and `g`'s padding rows are zeroed
    // per task below.
    let buffers = || {
        let w = BackwardScratch {
            g: vec![0f32; s * hd],
            ds: vec![0f32; s * t],
            d_values: vec![0f32; t * hd],
            dq: vec![0f32; s * hd],
            d_keys: vec![0f32; t * hd],
            prod: vec![0f32; t],
        };
        (HeadOperands::new(), w)
    };
    (0..n * heads)
        .into_par_iter()
        .for_each_init(buffers, |(ops, w), rest| {
            let (seq, h) = (rest / heads, rest % heads);
            ops.gather(x, pk, pv, shape, rows, past, seq, h);
            let p = &pr[rest * s * t..(rest + 1) * s * t];
            w.g[own_rows(seq).count() * hd..].fill(0.0);
            for ki in 0..kk {
                let task = ki * n * heads + rest;
                // The padding's cotangent rows stay zero.
                for (i, row) in own_rows(seq) {
                    let row = ki * r + row;
                    w.g[i * hd..(i + 1) * hd].copy_from_slice(&dy[row * width + h * hd..][..hd]);
                }
                // SAFETY: every operand is a contiguous buffer of this task with the extents
                // given; transposed operands are read with swapped strides.
                unsafe {
                    // dP = dO Vᵀ ; dV = Pᵀ dO
                    small_gemm(
                        (s, t, hd),
                        (w.ds.as_mut_ptr(), t as isize, 1),
                        (w.g.as_ptr(), hd as isize, 1),
                        (ops.values.as_ptr(), 1, hd as isize),
                        1.0,
                        false,
                    );
                    small_gemm(
                        (t, hd, s),
                        (w.d_values.as_mut_ptr(), hd as isize, 1),
                        (p.as_ptr(), 1, t as isize),
                        (w.g.as_ptr(), hd as isize, 1),
                        1.0,
                        false,
                    );
                }
                // dS = P ⊙ (dP − rowsum(dP ⊙ P)), then `* scale` as candle's affine.
                for (dr, pr_row) in w.ds.chunks_mut(t).zip(p.chunks(t)) {
                    w.prod
                        .iter_mut()
                        .zip(dr.iter().zip(pr_row))
                        .for_each(|(o, (&a, &b))| *o = a * b);
                    let mut row_dot = 0f32;
                    // SAFETY: `prod` holds t cells.
                    unsafe { f32::vec_reduce_sum(w.prod.as_ptr(), &mut row_dot, t) };
                    for (d, &pv) in dr.iter_mut().zip(pr_row) {
                        *d = pv * (*d - row_dot);
                        *d = *d * scale + 0.0;
                    }
                }
                // SAFETY: as above.
                unsafe {
                    // dQ = dS K ; dK = dSᵀ Q
                    small_gemm(
                        (s, hd, t),
                        (w.dq.as_mut_ptr(), hd as isize, 1),
                        (w.ds.as_ptr(), t as isize, 1),
                        (ops.keys.as_ptr(), hd as isize, 1),
                        1.0,
                        false,
                    );
                    small_gemm(
                        (t, hd, s),
                        (w.d_keys.as_mut_ptr(), hd as isize, 1),
                        (w.ds.as_ptr(), 1, t as isize),
                        (ops.q.as_ptr(), hd as isize, 1),
                        1.0,
                        false,
                    );
                }
                for (i, row) in own_rows(seq) {
                    let row = ki * r + row;
                    let (own_k, own_v) = (
                        &w.d_keys[(past + i) * hd..][..hd],
                        &w.d_values[(past + i) * hd..][..hd],
                    );
                    // SAFETY: this task alone writes this row's cells in this head's q, k and v
                    // columns of cotangent ki.
                    unsafe {
                        let base = d_ptr.at(row * 3 * width + h * hd);
                        for c in 0..hd {
                            *base.add(c) = w.dq[i * hd + c];
                            let (mut k, mut v) = (own_k[c], own_v[c]);
                            if let Some((ek, ev)) = own {
                                k += ek[row * width + h * hd + c];
                                v += ev[row * width + h * hd + c];
                            }
                            *base.add(width + c) = k;
                            *base.add(2 * width + c) = v;
                        }
                    }
                }
                let part = past * hd;
                // SAFETY: block `task` of each half of `past_parts` is this (cotangent,
                // sequence, head)'s alone.
                unsafe {
                    std::ptr::copy_nonoverlapping(w.d_keys.as_ptr(), pp_ptr.at(task * part), part);
                    std::ptr::copy_nonoverlapping(
                        w.d_values.as_ptr(),
                        pp_ptr.at((kk * n * heads + task) * part),
                        part,
                    );
                }
            }
        });
    // SAFETY: every task wrote each of its rows' q, k and v cells of its head for every
    // cotangent — all cells, as the rows are covered by the sequences and the width by
    // the heads (checked) — and its two past blocks for every cotangent.
    unsafe {
        d_qkv.set_len(d_qkv_len);
        past_parts.set_len(parts_len);
    }
    // Sum over the N sequences in their order from 0, as `sum_keepdim(0)` does (each
    // cell's terms in that order from +0), into rows.
    let part = past * hd;
    let sum_past = |half: usize| -> Result<Tensor> {
        let mut rows = vec![0f32; kk * past * width];
        let mut acc = vec![0f32; part];
        for ki in 0..kk {
            for h in 0..heads {
                acc.iter_mut().for_each(|a| *a = 0.0);
                for seq in 0..n {
                    let task = (ki * n + seq) * heads + h;
                    let block = &past_parts[(half * kk * n * heads + task) * part..][..part];
                    acc.iter_mut().zip(block).for_each(|(a, &b)| *a += b);
                }
                for pi in 0..past {
                    rows[(ki * past + pi) * width + h * hd..][..hd].copy_from_slice(&acc[pi * hd..][..hd]);
                }
            }
        }
        Ok(Tensor::from_vec(rows, (kk, past, width), &Device::Cpu)?)
    };
    Ok(PastGrad {
        d_qkv: Tensor::from_vec(d_qkv, (kk, r, 3 * width), &Device::Cpu)?,
        d_past_k: sum_past(0)?,
        d_past_v: sum_past(1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ops::testutil::{bits, rand_tensor};

    /// Packed rows give the padded layout's numbers: a packed call equals a padded call
    /// whose padding rows are zero, row for row (output, q/k/v cotangents, own key/value
    /// cotangents added) and bit for bit for the past's cotangents; padding is refused
    /// without the causal mask.
    #[test]
    fn packed_rows_give_the_padded_numbers() {
        let (lens, p, d, h) = ([3, 5, 1, 4], 6, 64, 2);
        let (n, s) = (lens.len(), 5);
        let packing = Packing::new(&lens).unwrap();
        let r = packing.rows();
        let shape = AttentionShape {
            n,
            s,
            heads: h,
            width: d,
            causal: true,
        };
        let qkv = rand_tensor(&[r, 3 * d], 1, 1.0);
        let (pk, pv) = (
            rand_tensor(&[1, h, p, d / h], 2, 1.0),
            rand_tensor(&[1, h, p, d / h], 3, 1.0),
        );
        let padded = |t: &Tensor| packing.pad(t).unwrap();
        let (o, probs) = forward(&qkv, &pk, &pv, shape, Some(&packing), true).unwrap();
        let (o_pad, probs_pad) = forward(&padded(&qkv), &pk, &pv, shape, None, true).unwrap();
        assert_eq!(bits(&o), bits(&packing.pack(&o_pad).unwrap()), "output");
        let (probs, probs_pad) = (probs.unwrap(), probs_pad.unwrap());
        assert_eq!(bits(&probs), bits(&probs_pad), "probabilities");
        let d_o = rand_tensor(&[2, r, d], 4, 1.0);
        let (ek, ev) = (rand_tensor(&[2, r, d], 5, 1.0), rand_tensor(&[2, r, d], 6, 1.0));
        for own in [None, Some((&ek, &ev))] {
            let g = backward(&qkv, &pk, &pv, &probs, &d_o, own, shape, Some(&packing)).unwrap();
            let own_pad = own.map(|(k, v)| (padded(k), padded(v)));
            let g_pad = backward(
                &padded(&qkv),
                &pk,
                &pv,
                &probs_pad,
                &padded(&d_o),
                own_pad.as_ref().map(|(k, v)| (k, v)),
                shape,
                None,
            )
            .unwrap();
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let what = if own.is_some() { "with own" } else { "alone" };
            assert_eq!(
                values(&g.d_qkv),
                values(&packing.pack(&g_pad.d_qkv).unwrap()),
                "q/k/v cotangents, {what}"
            );
            assert_eq!(bits(&g.d_past_k), bits(&g_pad.d_past_k), "past keys, {what}");
            assert_eq!(bits(&g.d_past_v), bits(&g_pad.d_past_v), "past values, {what}");
        }
        let full = AttentionShape {
            causal: false,
            ..shape
        };
        assert!(forward(&qkv, &pk, &pv, full, Some(&packing), false).is_err());
        let wrong = Packing::new(&[3, 5, 1]).unwrap();
        assert!(forward(&qkv, &pk, &pv, shape, Some(&wrong), false).is_err());
    }
}

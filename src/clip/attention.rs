//! The attention core of a block on the CPU, fused: softmax(q kᵀ / √hd [+ causal mask]) v
//! and its VJP, one (sequence, head) per parallel task, reading q, k and v straight from
//! the fused projection rows `[N·S, 3D]` and writing the output (and the q/k/v
//! cotangents) straight into row matrices — no head split/merge copies, no per-matrix
//! thread hand-off (candle runs a batched matmul as one threaded gemm per matrix, which
//! for 1 000 matrices of 65 × 32 is mostly hand-off). The small matmuls are `gemm` calls
//! without threading; the softmax uses the vectorizing [`fast_exp`].
//!
//! Only for f32 CPU tensors and attention without a shared past; [`super::block`] falls
//! back to the candle composition otherwise (and the tests compare the two).

use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, Device, Storage, StorageRef, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::kernels::{fast_exp, lane_dot, lane_sum, wide_simd};
use super::matmul::rows_compute_alike;

/// The layout of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Sequences.
    pub n: usize,
    /// Positions per sequence.
    pub s: usize,
    /// Heads.
    pub heads: usize,
    /// Residual width D (heads × head width).
    pub width: usize,
    /// Causal mask (query i sees keys ≤ i).
    pub causal: bool,
}

impl AttentionShape {
    fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}

/// True when the fused kernel applies to these tensors.
pub fn applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// A pointer that parallel tasks share to write disjoint cells of one buffer.
#[derive(Clone, Copy)]
pub(super) struct SharedOut(pub(super) *mut f32);
// SAFETY: every task writes a set of cells no other task touches (see the call sites).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The cell `offset` places past the start (a method, so closures capture the
    /// `Send` wrapper rather than the raw pointer inside it).
    ///
    /// # Safety
    /// `offset` must lie within the buffer.
    pub(super) unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// Task `task`'s block of `len` probabilities: its cells of the kept buffer when `kept`
/// is given, else `scratch`.
///
/// # Safety
/// With `kept`, cells `task · len .. (task + 1) · len` lie inside its buffer and belong to
/// the calling task alone.
pub(super) unsafe fn probs_block(
    kept: Option<SharedOut>,
    task: usize,
    len: usize,
    scratch: &mut Vec<f32>,
) -> &mut [f32] {
    match kept {
        Some(buf) => std::slice::from_raw_parts_mut(buf.at(task * len), len),
        None => {
            scratch.resize(len, 0f32);
            scratch
        }
    }
}

/// `dst[m×n] (= or +=) beta · lhs[m×k] · rhs[k×n]`, all strided, single-threaded.
///
/// # Safety
/// The pointers must address the strided extents implied by the sizes.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn small_gemm(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
    accumulate: bool,
) {
    gemm(
        m,
        n,
        k,
        dst.0,
        dst.2,
        dst.1,
        accumulate,
        lhs.0,
        lhs.2,
        lhs.1,
        rhs.0,
        rhs.2,
        rhs.1,
        if accumulate { 1.0 } else { 0.0 },
        beta,
        false,
        false,
        false,
        Parallelism::None,
    )
}

/// Read access to the contiguous f32 data of a CPU tensor.
pub(super) struct F32View<'a> {
    storage: StorageRef<'a>,
    range: std::ops::Range<usize>,
}

impl<'a> F32View<'a> {
    pub(super) fn of(t: &'a Tensor) -> Result<Self> {
        let (storage, layout) = t.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("fused attention expects contiguous tensors");
        };
        if !matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))) {
            bail!("fused attention expects f32 tensors on the CPU");
        }
        Ok(F32View {
            storage,
            range: start..end,
        })
    }

    pub(super) fn data(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.clone()],
            _ => &[],
        }
    }
}

wide_simd! {
    /// Row softmax of an `s × s` score block in place; with `causal`, row i keeps only
    /// columns ≤ i (the rest become 0). Max, exponentials, sum and scaling are separate
    /// passes so each vectorizes.
    fn softmax_rows(scores: &mut [f32], s: usize, causal: bool) {
        for (i, row) in scores.chunks_mut(s).enumerate() {
            let len = if causal { i + 1 } else { s };
            let (live, masked) = row.split_at_mut(len);
            let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            live.iter_mut().for_each(|v| *v = fast_exp(*v - max));
            let inv = 1.0 / lane_sum(live);
            live.iter_mut().for_each(|v| *v *= inv);
            masked.iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

wide_simd! {
    /// dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale in place of dP, for an `s × s` block.
    fn softmax_backward_rows(ds: &mut [f32], p: &[f32], s: usize, scale: f32) {
        for (dr, pr) in ds.chunks_mut(s).zip(p.chunks(s)) {
            let row_dot = lane_dot(dr, pr);
            for (d, &pv) in dr.iter_mut().zip(pr) {
                *d = pv * (*d - row_dot) * scale;
            }
        }
    }
}

/// Checks that `qkv` holds the `[N·S, 3D]` q/k/v rows of `shape`.
fn check_rows(qkv: &Tensor, shape: AttentionShape) -> Result<()> {
    let AttentionShape { n, s, width, .. } = shape;
    if qkv.dims() != [n * s, 3 * width] {
        bail!(
            "fused attention: q/k/v rows {:?}, expected [{}, {}]",
            qkv.dims(),
            n * s,
            3 * width
        );
    }
    Ok(())
}

/// The first `rows` queries of sequence `seq`, head `h`, against all `S` keys: scores,
/// then probabilities, in `p` (`rows × S`), outputs in `out` (`rows × hd` at row stride
/// `out_stride`).
///
/// # Safety
/// `x` must hold the `[N·S, 3D]` q/k/v rows of `shape` with `seq < N`, `h < H`,
/// `rows ≤ S`, `p.len() ≥ rows · S`; `out` must address `rows` rows of `hd` cells at
/// stride `out_stride` that no other task touches.
#[allow(clippy::too_many_arguments)]
unsafe fn head_rows(
    x: &[f32],
    shape: AttentionShape,
    seq: usize,
    h: usize,
    rows: usize,
    p: &mut [f32],
    out: *mut f32,
    out_stride: usize,
) {
    let AttentionShape { s, width, .. } = shape;
    let hd = shape.head_dim();
    let row0 = seq * s * 3 * width;
    let q = x[row0 + h * hd..].as_ptr();
    let k = x[row0 + width + h * hd..].as_ptr();
    let v = x[row0 + 2 * width + h * hd..].as_ptr();
    let ld = (3 * width) as isize;
    small_gemm(
        (rows, s, hd),
        (p.as_mut_ptr(), s as isize, 1),
        (q, ld, 1),
        (k, 1, ld),
        1.0 / (hd as f32).sqrt(),
        false,
    );
    softmax_rows(&mut p[..rows * s], s, shape.causal);
    small_gemm(
        (rows, hd, s),
        (out, out_stride as isize, 1),
        (p.as_ptr(), s as isize, 1),
        (v, ld, 1),
        1.0,
        false,
    );
}

/// Forward: `qkv: [N·S, 3D]` → attention output rows `[N·S, D]` and, when `keep_probs`,
/// the probabilities `[N, H, S, S]`.
pub fn forward(qkv: &Tensor, shape: AttentionShape, keep_probs: bool) -> Result<(Tensor, Option<Tensor>)> {
    let AttentionShape {
        n, s, heads, width, ..
    } = shape;
    check_rows(qkv, shape)?;
    let hd = shape.head_dim();
    let mut out = vec![0f32; n * s * width];
    let mut probs = vec![0f32; if keep_probs { n * heads * s * s } else { 0 }];
    let (o_ptr, p_ptr) = (SharedOut(out.as_mut_ptr()), SharedOut(probs.as_mut_ptr()));
    let x_view = F32View::of(qkv)?;
    let x = x_view.data();
    // Without kept probabilities, each worker reuses one scratch block for all its tasks
    // (`head_rows` overwrites it).
    (0..n * heads)
        .into_par_iter()
        .for_each_init(Vec::new, |scratch, task| {
            let (seq, h) = (task / heads, task % heads);
            // SAFETY: task `task` owns probability block `task` (s·s cells) and the output
            // cells of its sequence's rows and its head's columns; `x` passed the shape check.
            unsafe {
                let p = probs_block(keep_probs.then_some(p_ptr), task, s * s, scratch);
                head_rows(x, shape, seq, h, s, p, o_ptr.at(seq * s * width + h * hd), width);
            }
        });
    let out = Tensor::from_vec(out, (n * s, width), &Device::Cpu)?;
    let probs = keep_probs
        .then(|| Tensor::from_vec(probs, (n, heads, s, s), &Device::Cpu))
        .transpose()?;
    Ok((out, probs))
}

/// The fewest queries per (sequence, head) whose scores and outputs gemm computes with the
/// bits it gives them among all `S` queries ([`rows_compute_alike`] for `q kᵀ`, `S` keys
/// over the head width, and for `p v`, the head width over `S` keys), so that the first
/// query's row can be computed alone by computing only that many; `None` when no count
/// below `S` does (or under the causal mask, which the shortcut does not serve).
pub fn first_query_rows(shape: AttentionShape) -> Option<usize> {
    let (s, hd) = (shape.s, shape.head_dim());
    if shape.causal {
        return None;
    }
    (1..s).find(|&r| rows_compute_alike(s, hd, r) && rows_compute_alike(hd, s, r))
}

/// [`forward`] for the first query of every sequence only (without a tape): `qkv:
/// [N·S, 3D]` → `[N, D]`, bit for bit the rows 0, S, 2S, … of [`forward`]'s output.
/// Each (sequence, head) computes `rows` queries ([`first_query_rows`]) against all `S`
/// keys, so the last block of a tower that reads only its class token costs a few
/// queries' attention instead of `S`.
pub fn forward_first_query(qkv: &Tensor, shape: AttentionShape, rows: usize) -> Result<Tensor> {
    let AttentionShape {
        n, s, heads, width, ..
    } = shape;
    check_rows(qkv, shape)?;
    if first_query_rows(shape).is_none_or(|least| rows < least || rows > s) {
        bail!("fused attention: {rows} queries of {s} do not keep the first query's bits");
    }
    let hd = shape.head_dim();
    let mut out = vec![0f32; n * width];
    let o_ptr = SharedOut(out.as_mut_ptr());
    let x_view = F32View::of(qkv)?;
    let x = x_view.data();
    (0..n * heads).into_par_iter().for_each_init(
        || (vec![0f32; rows * s], vec![0f32; rows * hd]),
        |(p, o), task| {
            let (seq, h) = (task / heads, task % heads);
            // SAFETY: `x` passed the shape check, `rows ≤ S`; `p` and `o` are this task's
            // own scratch, and the first query's cells of this (sequence, head) in
            // `out` belong to this task alone.
            unsafe {
                head_rows(x, shape, seq, h, rows, p, o.as_mut_ptr(), hd);
                std::ptr::copy_nonoverlapping(o.as_ptr(), o_ptr.at(seq * width + h * hd), hd);
            }
        },
    );
    Ok(Tensor::from_vec(out, (n, width), &Device::Cpu)?)
}

/// VJP for K cotangents `d_out: [K, N·S, D]` of the output: cotangents of the fused
/// q/k/v rows, `[K, N·S, 3D]`.
pub fn backward(qkv: &Tensor, probs: &Tensor, d_out: &Tensor, shape: AttentionShape) -> Result<Tensor> {
    let AttentionShape {
        n, s, heads, width, ..
    } = shape;
    let hd = shape.head_dim();
    let kk = d_out.dim(0)?;
    if d_out.dims() != [kk, n * s, width] || probs.dims() != [n, heads, s, s] {
        bail!(
            "fused attention backward: cotangent {:?} and probabilities {:?} for {n} × {s} rows, {heads} heads",
            d_out.dims(),
            probs.dims()
        );
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let mut d_qkv = vec![0f32; kk * n * s * 3 * width];
    let d_ptr = SharedOut(d_qkv.as_mut_ptr());
    let (xv, pv, dv) = (F32View::of(qkv)?, F32View::of(probs)?, F32View::of(d_out)?);
    let (x, pr, dy) = (xv.data(), pv.data(), dv.data());
    // Each worker reuses one `ds` block for all its tasks (the first gemm overwrites it).
    (0..kk * n * heads).into_par_iter().for_each_init(
        || vec![0f32; s * s],
        |ds, task| {
            let (ki, rest) = (task / (n * heads), task % (n * heads));
            let (seq, h) = (rest / heads, rest % heads);
            let row0 = seq * s * 3 * width;
            let ld = (3 * width) as isize;
            let q = x[row0 + h * hd..].as_ptr();
            let k = x[row0 + width + h * hd..].as_ptr();
            let v = x[row0 + 2 * width + h * hd..].as_ptr();
            let p = &pr[rest * s * s..(rest + 1) * s * s];
            let g = dy[(ki * n + seq) * s * width + h * hd..].as_ptr();
            let base = (ki * n * s + seq * s) * 3 * width + h * hd;
            // SAFETY: reads stay inside q/k/v rows of this sequence and head, the
            // cotangent rows of this (cotangent, sequence, head); the writes go to
            // this task's own columns of d_qkv.
            unsafe {
                let dq = d_ptr.at(base);
                let dk = d_ptr.at(base + width);
                let dv = d_ptr.at(base + 2 * width);
                // dP = dO Vᵀ ; dV = Pᵀ dO
                small_gemm(
                    (s, s, hd),
                    (ds.as_mut_ptr(), s as isize, 1),
                    (g, width as isize, 1),
                    (v, 1, ld),
                    1.0,
                    false,
                );
                small_gemm(
                    (s, hd, s),
                    (dv, ld, 1),
                    (p.as_ptr(), 1, s as isize),
                    (g, width as isize, 1),
                    1.0,
                    false,
                );
                // dS = P ⊙ (dP − rowsum(dP ⊙ P)), scaled
                softmax_backward_rows(ds, p, s, scale);
                // dQ = dS K ; dK = dSᵀ Q
                small_gemm(
                    (s, hd, s),
                    (dq, ld, 1),
                    (ds.as_ptr(), s as isize, 1),
                    (k, ld, 1),
                    1.0,
                    false,
                );
                small_gemm(
                    (s, hd, s),
                    (dk, ld, 1),
                    (ds.as_ptr(), 1, s as isize),
                    (q, ld, 1),
                    1.0,
                    false,
                );
            }
        },
    );
    Ok(Tensor::from_vec(d_qkv, (kk, n * s, 3 * width), &Device::Cpu)?)
}

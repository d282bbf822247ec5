//! Fused CPU kernels for the element-wise steps that dominate outside the matmuls.
//! Each has a plain candle composition as fallback (other devices and dtypes) and a test
//! that both agree.

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor, D};
use rayon::prelude::*;
use std::mem::MaybeUninit;

const CHUNK: usize = 1 << 14;
const GELU_ALPHA: f32 = 1.702;

/// e^x in f32 without a libm call, so loops over it vectorize: x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2 (n by the 1.5·2²³ rounding trick, ln 2 split in two for an exact
/// reduction), Cephes' degree-6 polynomial for e^r, and 2ⁿ built from its bits. Arguments
/// are clamped to [−87.33, 88.37] (the normal range); within it the relative error is a
/// couple of ulp (test `fast_exp_is_accurate`).
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³
    let x = x.clamp(-87.33, 88.37);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // t's bits are those of 1.5 · 2²³ plus n.
    let k = (t.to_bits() as i32) - 0x4B40_0000;
    y * f32::from_bits(((k + 127) << 23) as u32)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

/// Defines a slice kernel that runs compiled for AVX-512 or AVX2 when the CPU has it: the
/// same arithmetic in wider registers. Rust never fuses a multiply and an add on its own
/// (only `mul_add` does), so every element gets the same bits as in the baseline (SSE2)
/// build; only the lane count changes (test `wide_kernels_give_the_baseline_bits`).
macro_rules! wide_simd {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide_simd;

/// Σ a with eight independent partial sums: a shape the compiler vectorizes (one running
/// f32 sum is a serial dependency it may not reorder). The order is fixed by this code,
/// not by the vector width.
#[inline(always)]
pub(crate) fn lane_sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for x in chunks {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ a·b in the shape of [`lane_sum`].
#[inline(always)]
pub(crate) fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Mean and 1/√(var + eps) of a row.
#[inline(always)]
fn row_stats(xr: &[f32], eps: f32) -> (f32, f32) {
    let inv_d = 1.0 / xr.len() as f32;
    let mean = lane_sum(xr) * inv_d;
    let mut acc = [0f32; 8];
    let chunks = xr.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    for x in chunks {
        for l in 0..8 {
            acc[l] += (x[l] - mean) * (x[l] - mean);
        }
    }
    let var = (acc.iter().sum::<f32>() + tail) * inv_d;
    (mean, 1.0 / (var + eps).sqrt())
}

wide_simd! {
    /// One row of the LayerNorm VJP (see [`LayerNormBackward`]).
    /// `out` may start uninitialized; every cell is written (`dyr`, `xr` and `gamma` are
    /// as long as it).
    fn layer_norm_backward_row(out: &mut [MaybeUninit<f32>], dyr: &[f32], xr: &[f32], gamma: &[f32], eps: f32) {
        let inv_d = 1.0 / xr.len() as f32;
        let (mean, rstd) = row_stats(xr, eps);
        // g = dy ⊙ γ into `out`, then Σ g and Σ g ⊙ x̂.
        assert!(dyr.len() == out.len() && gamma.len() == out.len(), "layer_norm_backward_row: row lengths");
        for ((o, &d), &g) in out.iter_mut().zip(dyr).zip(gamma) {
            o.write(d * g);
        }
        // SAFETY: the loop above wrote every cell of `out`.
        let out = unsafe { assume_init(out) };
        let sum_g = lane_sum(out);
        // Σ g ⊙ (x − μ) directly (not Σ g x − μ Σ g, which cancels for large μ).
        let mut acc = [0f32; 8];
        let (cg, cx) = (out.chunks_exact(8), xr.chunks_exact(8));
        let tail: f32 = cg.remainder().iter().zip(cx.remainder()).map(|(g, x)| g * (x - mean)).sum();
        for (g, x) in cg.zip(cx) {
            for l in 0..8 {
                acc[l] += g[l] * (x[l] - mean);
            }
        }
        let sum_gx = (acc.iter().sum::<f32>() + tail) * rstd;
        let (a, b) = (sum_g * inv_d, sum_gx * inv_d);
        for (o, &x) in out.iter_mut().zip(xr) {
            let xhat = (x - mean) * rstd;
            *o = rstd * (*o - a - xhat * b);
        }
    }
}

wide_simd! {
    /// Accumulates dγ (first half of `acc`) and dβ (second half) over a block of
    /// cotangent rows starting at row `first` (rows of x cycle every `rows`).
    fn layer_norm_param_block(acc: &mut [f32], block: &[f32], x: &[f32], first: usize, rows: usize, eps: f32) {
        let d = acc.len() / 2;
        let (dg, db) = acc.split_at_mut(d);
        for (r, dyr) in block.chunks(d).enumerate() {
            let i = (first + r) % rows;
            let xr = &x[i * d..(i + 1) * d];
            let (mean, rstd) = row_stats(xr, eps);
            for (((g, b), &dv), &xv) in dg.iter_mut().zip(db.iter_mut()).zip(dyr).zip(xr) {
                *g += dv * (xv - mean) * rstd;
                *b += dv;
            }
        }
    }
}

wide_simd! {
    /// y = x · σ(1.702 x) over a chunk.
    /// `y` may start uninitialized; the cells paired with `x`'s are written.
    fn gelu_chunk(y: &mut [MaybeUninit<f32>], x: &[f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            o.write(v * sigmoid(GELU_ALPHA * v));
        }
    }
}

wide_simd! {
    /// dx = dy · (s + 1.702 h s (1 − s)), s = σ(1.702 h), over a chunk.
    /// `dx` may start uninitialized; the cells paired with `dy`'s and `h`'s are written.
    fn gelu_backward_chunk(dx: &mut [MaybeUninit<f32>], dy: &[f32], h: &[f32]) {
        for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(h) {
            let s = sigmoid(GELU_ALPHA * v);
            o.write(g * (s + GELU_ALPHA * v * s * (1.0 - s)));
        }
    }
}

/// A vector of `len` cells that `fill` writes, allocated without zeroing them first (the
/// custom ops' outputs are written whole, and zeroing them was a few percent of a tiny
/// model's step).
///
/// # Safety
/// `fill` must write every one of the `len` cells it is given.
unsafe fn unzeroed(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `fill` initialized all `len` cells.
    unsafe { v.set_len(len) };
    v
}

/// `cells` as initialized floats.
///
/// # Safety
/// Every cell must have been written.
unsafe fn assume_init(cells: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the caller vouches that every
    // cell holds a value.
    unsafe { &mut *(cells as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused kernel expects a contiguous tensor"),
    }
}

/// The f32 cells that `layout` spans in a CPU storage, for an operand a custom op holds
/// itself (under the read lock of `Tensor::storage_and_layout`) rather than receiving.
pub(super) fn held_f32_cells<'a>(storage: &'a Storage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match storage {
        Storage::Cpu(cpu) => contiguous_f32(cpu, layout),
        _ => candle_core::bail!("a held operand is not on the CPU"),
    }
}

struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        // SAFETY: the chunks of `y` pair with those of `x`, of the same length, and
        // `gelu_chunk` writes every cell of each.
        let y = unsafe {
            unzeroed(x.len(), |y| {
                y.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK))
                    .for_each(|(yc, xc)| gelu_chunk(yc, xc))
            })
        };
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }
}

/// `dy [K, M, F] ⊙ quick_gelu'(h [M, F])`.
struct QuickGeluBackward;

impl CustomOp2 for QuickGeluBackward {
    fn name(&self) -> &'static str {
        "quick-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        h_s: &CpuStorage,
        h_l: &Layout,
        dy_s: &CpuStorage,
        dy_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = contiguous_f32(h_s, h_l)?;
        let dy = contiguous_f32(dy_s, dy_l)?;
        let n = h.len();
        // Empty activations take empty cotangents (an empty output, as before).
        if dy.len() % n.max(1) != 0 || (n == 0 && !dy.is_empty()) {
            candle_core::bail!(
                "quick-gelu-backward: {} cotangent cells for {n} activations",
                dy.len()
            );
        }
        // SAFETY: one cotangent at a time, so the chunks of `dx`, `dy` and `h` line up and
        // have equal lengths, and `gelu_backward_chunk` writes every cell of each.
        let dx = unsafe {
            unzeroed(dy.len(), |dx| {
                for (dx_k, dy_k) in dx.chunks_mut(n.max(1)).zip(dy.chunks(n.max(1))) {
                    dx_k.par_chunks_mut(CHUNK)
                        .zip(dy_k.par_chunks(CHUNK))
                        .zip(h.par_chunks(CHUNK))
                        .for_each(|((o, g), hc)| gelu_backward_chunk(o, g, hc));
                }
            })
        };
        Ok((CpuStorage::F32(dx), dy_l.shape().clone()))
    }
}

/// LayerNorm VJP from the saved *input* x `[M, D]`: per row, recompute μ and 1/σ, then
/// dx = rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂)) with g = dy ⊙ γ, for every cotangent in
/// `dy [K, M, D]`.
struct LayerNormBackward {
    eps: f32,
    /// Added to the VJP, row by row (`[K, M, D]`, contiguous f32 on the CPU).
    residual: Option<Tensor>,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x_s: &CpuStorage,
        x_l: &Layout,
        g_s: &CpuStorage,
        g_l: &Layout,
        dy_s: &CpuStorage,
        dy_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_s, x_l)?;
        let gamma = contiguous_f32(g_s, g_l)?;
        let dy = contiguous_f32(dy_s, dy_l)?;
        let d = gamma.len();
        if d == 0 || dy.len() % d != 0 || x.len() % d != 0 {
            candle_core::bail!(
                "layer-norm-backward: rows of {d} for {} cotangent and {} input cells",
                dy.len(),
                x.len()
            );
        }
        let rows = x.len() / d;
        let held = self.residual.as_ref().map(Tensor::storage_and_layout);
        let residual = held.as_ref().map(|(s, l)| held_f32_cells(s, l)).transpose()?;
        if residual.is_some_and(|r| r.len() != dy.len()) {
            candle_core::bail!("layer-norm-backward: the residual does not match the cotangents");
        }
        // SAFETY: `dx` splits into rows of d as `dy` does, and `layer_norm_backward_row`
        // writes every cell of its row before the residual is added.
        let dx = unsafe {
            unzeroed(dy.len(), |dx| {
                dx.par_chunks_mut(d)
                    .zip(dy.par_chunks(d))
                    .enumerate()
                    .for_each(|(i, (out, dyr))| {
                        let xr = &x[(i % rows) * d..(i % rows + 1) * d];
                        layer_norm_backward_row(out, dyr, xr, gamma, self.eps);
                        if let Some(r) = residual {
                            // SAFETY: the row was just written whole.
                            let out = assume_init(out);
                            for (o, r) in out.iter_mut().zip(&r[i * d..(i + 1) * d]) {
                                *o += *r;
                            }
                        }
                    })
            })
        };
        Ok((CpuStorage::F32(dx), dy_l.shape().clone()))
    }
}

/// VJP of LayerNorm(γ, β, eps) at input `x: [M, D]` for cotangents `dy: [K, M, D]`.
pub fn layer_norm_backward(x: &Tensor, gamma: &Tensor, eps: f64, dy: &Tensor) -> Result<Tensor> {
    layer_norm_backward_op(x, gamma, eps, dy, None)
}

/// `residual + VJP` ([`layer_norm_backward`]) for a residual shaped as `dy`: the bits of
/// the separate `+`, each row added as the kernel writes it.
pub fn layer_norm_backward_add(
    x: &Tensor,
    gamma: &Tensor,
    eps: f64,
    dy: &Tensor,
    residual: &Tensor,
) -> Result<Tensor> {
    if fused_ok(&[residual]) && residual.dims() == dy.dims() {
        return layer_norm_backward_op(x, gamma, eps, dy, Some(residual));
    }
    Ok((residual + layer_norm_backward(x, gamma, eps, dy)?)?)
}

fn layer_norm_backward_op(
    x: &Tensor,
    gamma: &Tensor,
    eps: f64,
    dy: &Tensor,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let d = gamma.elem_count();
    if fused_ok(&[x, gamma, dy]) && d > 0 && dy.elem_count().is_multiple_of(x.elem_count().max(1)) {
        let op = LayerNormBackward {
            eps: eps as f32,
            residual: residual.cloned(),
        };
        return Ok(x.apply_op3_no_bwd(gamma, dy, &op)?);
    }
    let vjp = layer_norm_backward_composed(x, gamma, eps, dy)?;
    Ok(match residual {
        Some(r) => (r + vjp)?,
        None => vjp,
    })
}

/// [`layer_norm_backward`] from candle's operations (other devices and dtypes).
fn layer_norm_backward_composed(x: &Tensor, gamma: &Tensor, eps: f64, dy: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let rstd = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let xhat = xc.broadcast_mul(&rstd)?.unsqueeze(0)?;
    let g = dy.broadcast_mul(gamma)?;
    let mean_g = g.mean_keepdim(D::Minus1)?;
    let mean_gx = g.broadcast_mul(&xhat)?.mean_keepdim(D::Minus1)?;
    Ok(g.broadcast_sub(&mean_g)?
        .sub(&xhat.broadcast_mul(&mean_gx)?)?
        .broadcast_mul(&rstd.unsqueeze(0)?)?)
}

/// Rows per work item of [`LayerNormParamGrads`]: fixed, so the partial sums and their
/// order (hence the rounding) do not depend on the thread count.
const PARAM_ROWS: usize = 64;

/// LayerNorm parameter gradients from the saved input x `[M, D]` and cotangents
/// `dy [K, M, D]`: per row recompute μ and 1/σ, then accumulate dγ += dy ⊙ x̂ and
/// dβ += dy over all K·M rows. Output `[2, D]` (dγ, then dβ).
struct LayerNormParamGrads {
    eps: f32,
}

impl CustomOp2 for LayerNormParamGrads {
    fn name(&self) -> &'static str {
        "layer-norm-param-grads"
    }

    fn cpu_fwd(
        &self,
        x_s: &CpuStorage,
        x_l: &Layout,
        dy_s: &CpuStorage,
        dy_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_s, x_l)?;
        let dy = contiguous_f32(dy_s, dy_l)?;
        let d = *x_l.dims().last().unwrap_or(&0);
        let rows = x.len() / d.max(1);
        let partials: Vec<Vec<f32>> = dy
            .par_chunks(PARAM_ROWS * d)
            .enumerate()
            .map(|(c, block)| {
                let mut acc = vec![0f32; 2 * d];
                layer_norm_param_block(&mut acc, block, x, c * PARAM_ROWS, rows, self.eps);
                acc
            })
            .collect();
        let mut out = vec![0f32; 2 * d];
        for p in &partials {
            for (o, v) in out.iter_mut().zip(p) {
                *o += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[2, d])))
    }
}

/// Gradients of LayerNorm's γ and β at input `x: [M, D]` for cotangents `dy: [K, M, D]`,
/// summed over the K cotangents and the M rows: `(dγ [D], dβ [D])`.
pub fn layer_norm_param_grads(x: &Tensor, eps: f64, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let d = x.dim(D::Minus1)?;
    if fused_ok(&[x, dy]) && d > 0 && dy.elem_count().is_multiple_of(x.elem_count().max(1)) {
        let both = x.apply_op2_no_bwd(dy, &LayerNormParamGrads { eps: eps as f32 })?;
        return Ok((both.get(0)?, both.get(1)?));
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let rstd = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let xhat = xc.broadcast_mul(&rstd)?;
    let rows = dy.reshape(((), d))?;
    let xhat_rows = xhat.unsqueeze(0)?.broadcast_as(dy.shape())?.reshape(((), d))?;
    Ok(((rows.clone() * xhat_rows)?.sum(0)?, rows.sum(0)?))
}

/// Column sums of rows: `x: [M, N] → [N]` (bias gradients), in fixed-size row blocks so
/// the result does not depend on the thread count.
struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let n = *layout.dims().last().unwrap_or(&0);
        let partials: Vec<Vec<f32>> = x
            .par_chunks(PARAM_ROWS * n.max(1))
            .map(|block| {
                let mut acc = vec![0f32; n];
                for row in block.chunks(n) {
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a += v;
                    }
                }
                acc
            })
            .collect();
        let mut out = vec![0f32; n];
        for p in &partials {
            for (o, v) in out.iter_mut().zip(p) {
                *o += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[n])))
    }
}

/// Sum over every axis but the last: `[…, N] → [N]`.
pub fn column_sum(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if fused_ok(&[x]) && n > 0 {
        return Ok(x.apply_op1_no_bwd(&ColumnSum)?);
    }
    Ok(x.reshape(((), n))?.sum(0)?)
}

fn fused_ok(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
}

/// QuickGELU, `x · σ(1.702 x)`, as in OpenAI's CLIP.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if fused_ok(&[x]) {
        return Ok(x.apply_op1_no_bwd(&QuickGelu)?);
    }
    Ok((x * candle_nn::ops::sigmoid(&(x * GELU_ALPHA as f64)?)?)?)
}

/// VJP of [`quick_gelu`] at pre-activation `h: [M, F]` for `dy: [K, M, F]`:
/// d/dh = s + 1.702 · h · s · (1 − s) with s = σ(1.702 h).
pub fn quick_gelu_backward(h: &Tensor, dy: &Tensor) -> Result<Tensor> {
    if fused_ok(&[h, dy]) && dy.elem_count().is_multiple_of(h.elem_count().max(1)) {
        return Ok(h.apply_op2_no_bwd(dy, &QuickGeluBackward)?);
    }
    let a = GELU_ALPHA as f64;
    let s = candle_nn::ops::sigmoid(&(h * a)?)?;
    let one_minus = s.affine(-1.0, 1.0)?;
    let deriv = (&s + ((h * a)? * &s)?.mul(&one_minus)?)?;
    Ok(dy.broadcast_mul(&deriv.unsqueeze(0)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ops::testutil::{bits, max_abs_diff, rand_tensor};

    /// Empty activations with empty cotangents give an empty VJP; rows the kernels cannot
    /// pair are refused with an error, not written half.
    #[test]
    fn vjps_take_empty_inputs_and_refuse_unpaired_rows() {
        let dev = candle_core::Device::Cpu;
        let h = Tensor::zeros((0, 8), DType::F32, &dev).unwrap();
        let dy = Tensor::zeros((2, 0, 8), DType::F32, &dev).unwrap();
        assert_eq!(quick_gelu_backward(&h, &dy).unwrap().dims(), [2, 0, 8]);
        let dy = rand_tensor(&[1, 3], 1, 1.0);
        assert!(h.apply_op2_no_bwd(&dy, &QuickGeluBackward).is_err());
    }

    /// The AVX2 build of a kernel gives the baseline's bits: same arithmetic, wider lanes.
    #[test]
    fn wide_kernels_give_the_baseline_bits() {
        let x: Vec<f32> = rand_tensor(&[5000], 12, 6.0).to_vec1().unwrap();
        // SAFETY: `gelu_chunk` writes every cell of an output as long as its input.
        let mut fast = unsafe { unzeroed(x.len(), |y| gelu_chunk(y, &x)) };
        let plain: Vec<f32> = x
            .iter()
            .map(|&v| v * (1.0 / (1.0 + fast_exp(-(GELU_ALPHA * v)))))
            .collect();
        assert_eq!(fast, plain);
        let dy: Vec<f32> = rand_tensor(&[5000], 13, 1.0).to_vec1().unwrap();
        // SAFETY: as above.
        fast = unsafe { unzeroed(x.len(), |dx| gelu_backward_chunk(dx, &dy, &x)) };
        let plain: Vec<f32> = x
            .iter()
            .zip(&dy)
            .map(|(&v, &g)| {
                let s = 1.0 / (1.0 + fast_exp(-(GELU_ALPHA * v)));
                g * (s + GELU_ALPHA * v * s * (1.0 - s))
            })
            .collect();
        assert_eq!(fast, plain);
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            worst = worst.max((got - want).abs() / want);
            x += 0.000_731;
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(-1e4) >= 0.0 && fast_exp(-1e4) < 1e-37);
        assert!(fast_exp(1e4).is_finite());
    }

    #[test]
    fn fused_kernels_match_the_composition() {
        let h = rand_tensor(&[37, 1000], 1, 4.0);
        let dy = rand_tensor(&[2, 37, 1000], 2, 1.0);
        let h64 = h.to_dtype(DType::F64).unwrap();
        let dy64 = dy.to_dtype(DType::F64).unwrap();
        assert!(max_abs_diff(&quick_gelu(&h).unwrap(), &quick_gelu(&h64).unwrap()) < 1e-5);
        let fused = quick_gelu_backward(&h, &dy).unwrap();
        let plain = quick_gelu_backward(&h64, &dy64).unwrap();
        assert!(max_abs_diff(&fused, &plain) < 1e-5);
        // lengths that are multiples of the chunk exercise the chunked path
        let h = rand_tensor(&[4, CHUNK], 3, 4.0);
        let dy = rand_tensor(&[3, 4, CHUNK], 4, 1.0);
        let fused = quick_gelu_backward(&h, &dy).unwrap();
        let plain = quick_gelu_backward(
            &h.to_dtype(DType::F64).unwrap(),
            &dy.to_dtype(DType::F64).unwrap(),
        )
        .unwrap();
        assert!(max_abs_diff(&fused, &plain) < 1e-5);
    }

    #[test]
    fn fused_parameter_gradients_match_the_composition() {
        // 150 rows × 2 cotangents: several row blocks, one partial at the end.
        let x = rand_tensor(&[150, 48], 8, 3.0);
        let dy = rand_tensor(&[2, 150, 48], 9, 1.0);
        let c = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (g, b) = layer_norm_param_grads(&x, 1e-5, &dy).unwrap();
        let (g64, b64) = layer_norm_param_grads(&c(&x), 1e-5, &c(&dy)).unwrap();
        assert!(max_abs_diff(&g, &g64) < 1e-4 && max_abs_diff(&b, &b64) < 1e-4);
        let s = column_sum(&dy).unwrap();
        assert!(max_abs_diff(&s, &column_sum(&c(&dy)).unwrap()) < 1e-4);
        assert!(max_abs_diff(&s, &b) < 1e-6);
    }

    #[test]
    fn fused_layer_norm_backward_matches_the_composition() {
        let x = rand_tensor(&[13, 64], 5, 3.0);
        let gamma = rand_tensor(&[64], 6, 1.0);
        let dy = rand_tensor(&[2, 13, 64], 7, 1.0);
        let fused = layer_norm_backward(&x, &gamma, 1e-5, &dy).unwrap();
        let c = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let plain = layer_norm_backward(&c(&x), &c(&gamma), 1e-5, &c(&dy)).unwrap();
        assert!(max_abs_diff(&fused, &plain) < 1e-5);
        // Rows far from zero mean (a residual stream) lose nothing to cancellation.
        let shifted = (&x + 50.0).unwrap();
        let fused = layer_norm_backward(&shifted, &gamma, 1e-5, &dy).unwrap();
        let plain = layer_norm_backward(&c(&shifted), &c(&gamma), 1e-5, &c(&dy)).unwrap();
        assert!(
            max_abs_diff(&fused, &plain) < 2e-4,
            "{}",
            max_abs_diff(&fused, &plain)
        );
        let (g, _) = layer_norm_param_grads(&shifted, 1e-5, &dy).unwrap();
        let (g64, _) = layer_norm_param_grads(&c(&shifted), 1e-5, &c(&dy)).unwrap();
        assert!(max_abs_diff(&g, &g64) < 2e-3, "{}", max_abs_diff(&g, &g64));
    }

    /// The residual added as the kernel writes each row gives the separate `+`'s bits,
    /// for one cotangent and several; a residual the kernel does not take (strided)
    /// goes through that `+` itself.
    #[test]
    fn a_residual_added_in_the_layer_norm_backward_gives_the_sums_bits() {
        let x = rand_tensor(&[13, 64], 15, 3.0);
        let gamma = rand_tensor(&[64], 16, 1.0);
        for k in [1, 3] {
            let dy = rand_tensor(&[k, 13, 64], 17, 1.0);
            let res = rand_tensor(&[k, 13, 64], 18, 1.0);
            let sum = (&res + layer_norm_backward(&x, &gamma, 1e-5, &dy).unwrap()).unwrap();
            let fused = layer_norm_backward_add(&x, &gamma, 1e-5, &dy, &res).unwrap();
            assert_eq!(bits(&fused), bits(&sum), "{k} cotangents");
        }
        let dy = rand_tensor(&[1, 13, 64], 19, 1.0);
        let strided = rand_tensor(&[1, 64, 13], 20, 1.0).transpose(1, 2).unwrap();
        let sum = (&strided + layer_norm_backward(&x, &gamma, 1e-5, &dy).unwrap()).unwrap();
        let got = layer_norm_backward_add(&x, &gamma, 1e-5, &dy, &strided).unwrap();
        assert_eq!(bits(&got), bits(&sum));
    }
}

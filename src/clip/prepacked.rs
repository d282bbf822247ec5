//! Frozen weights laid out once in gemm's own panels, and multiplied by gemm's own
//! microkernels.
//!
//! gemm copies the weight operand of every product into panels of 64 features before
//! it multiplies: at a prompt batch's few hundred rows that copy is 6 % of a ViT-B/16
//! prompt step (docs/perf-notes.md), made again in every call for a weight that never
//! changes. [`Prepacked`] lays out both products of a frozen `W [out, in]` once — the
//! forward `x Wᵀ` and the input's VJP `dy W` — and runs gemm's AVX-512 microkernels on
//! them directly, with the blocking of the inner dimension that gemm picks for the same
//! product. Every output cell is then the same chain of fused multiply-adds in the same
//! order as in gemm's general path, so the bits are gemm's (and candle's; the tests
//! compare them). It applies only where gemm itself takes that path with those kernels:
//! x86-64 with AVX-512F (gemm's `x86-v4` dispatch) and shapes that
//! [`layouts_compute_alike`] admits; elsewhere the caller falls back to [`matmul`].
//!
//! Without a copy per call, the work splits freely: tasks are groups of panels times
//! blocks of rows, balanced by rayon, each adding its block's bias and residual while
//! the block is still in its core's cache (as [`matmul_add`] does).
//!
//! [`matmul`]: super::matmul::matmul
//! [`matmul_add`]: super::matmul::matmul_add

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::attention::SharedOut;
use super::kernels::held_f32_cells;
use super::matmul::{add_to_block, layouts_compute_alike, Addends};

/// Features per panel: the rows of gemm's largest AVX-512 f32 kernel (4 × 16 lanes).
const MR: usize = 64;
/// Output rows per kernel call: the columns of gemm's largest AVX-512 f32 kernel.
const NR: usize = 6;
/// Alignment of the panels, in floats (one 64-byte cache line).
const ALIGN: usize = 16;
/// Rows up to which the prepacked products run. Beyond, gemm's own blocking of the rows
/// (it packs a block of rows once for many panels) wins: at 4 096 and 6 304 rows the
/// prepacked products ran up to 10 % slower, at 1 000–2 048 rows as fast or faster
/// (text- and image-tower shapes, 2026-12-06).
const MAX_ROWS: usize = 2048;
/// Panels per task at most (8 × 64 features × 512 deep is 1 MiB: within a core's L2).
const MAX_GROUP: usize = 8;

/// A frozen weight `W [out, in]` laid out for both of its products.
#[derive(Debug)]
pub struct Prepacked {
    /// `W` itself as `[out, in]` panels: the forward `x Wᵀ`.
    forward: Panels,
    /// `Wᵀ [in, out]` as panels: the input's VJP `dy W`.
    backward: Panels,
}

impl Prepacked {
    /// The two layouts of `weight [out, in]`, or `None` where gemm would not multiply
    /// with these kernels (not an f32 CPU tensor, or a CPU without AVX-512F).
    pub fn new(weight: &Tensor) -> Result<Option<Prepacked>> {
        if !kernels_apply() || !weight.device().is_cpu() || weight.dtype() != DType::F32 {
            return Ok(None);
        }
        let (out, inp) = weight.dims2()?;
        // Read in place (a contiguous weight is not copied first).
        let weight = weight.contiguous()?;
        let (storage, layout) = weight.storage_and_layout();
        let w = held_f32_cells(&storage, layout)?;
        Ok(Some(Prepacked {
            forward: Panels::new(w, out, inp, inp, 1),
            backward: Panels::new(w, inp, out, 1, inp),
        }))
    }

    /// `x Wᵀ` plus the addends, bit for bit `matmul_add(x, &W.t(), add)`, or `None`
    /// where the shapes fall outside gemm's general path or past [`MAX_ROWS`] (the
    /// caller falls back).
    pub fn forward(&self, x: &Tensor, add: Addends) -> Result<Option<Tensor>> {
        self.forward.times(x, add)
    }

    /// `dy W` for rows `dy [M, out]`, bit for bit `matmul(dy, W)`, or `None` as for
    /// [`Prepacked::forward`].
    pub fn backward(&self, dy: &Tensor) -> Result<Option<Tensor>> {
        self.backward.times(dy, Addends::default())
    }
}

/// Whether gemm multiplies f32 with the AVX-512 kernels here (its `x86-v4` dispatch).
fn kernels_apply() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A matrix `A [features, depth]` as gemm packs its left operand: panel `p` holds
/// features `64p .. 64p + 64`, and for each step `d` of the depth their 64 values side
/// by side (zeros past the last feature).
struct Panels {
    features: usize,
    depth: usize,
    /// The panels, starting at `start` (a cache-line boundary).
    buf: Vec<f32>,
    start: usize,
}

impl std::fmt::Debug for Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Panels [{} features × {} deep]", self.features, self.depth)
    }
}

impl Panels {
    /// Panels of `A[f, d] = src[f · f_stride + d · d_stride]`.
    fn new(src: &[f32], features: usize, depth: usize, f_stride: usize, d_stride: usize) -> Panels {
        let panel = MR * depth;
        let len = features.div_ceil(MR) * panel;
        let mut buf = vec![0f32; len + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN * 4).min(ALIGN);
        buf[start..start + len]
            .par_chunks_mut(panel)
            .enumerate()
            .for_each(|(p, cells)| {
                let f0 = p * MR;
                let width = MR.min(features - f0);
                for (d, step) in cells.chunks_mut(MR).enumerate() {
                    for (i, cell) in step[..width].iter_mut().enumerate() {
                        *cell = src[(f0 + i) * f_stride + d * d_stride];
                    }
                }
            });
        Panels {
            features,
            depth,
            buf,
            start,
        }
    }

    /// `x Aᵀ` plus the addends for rows `x [rows, depth]`, or `None` where gemm would
    /// not take its general path for this product, where it runs more rows than
    /// [`MAX_ROWS`], or where `x` is not a contiguous f32 CPU matrix of the right width.
    fn times(&self, x: &Tensor, add: Addends) -> Result<Option<Tensor>> {
        let Ok((rows, depth)) = x.dims2() else {
            return Ok(None);
        };
        let features = self.features;
        if depth != self.depth
            || !x.device().is_cpu()
            || x.dtype() != DType::F32
            || !x.is_contiguous()
            || rows > MAX_ROWS
            || !layouts_compute_alike(rows, features, depth)
            || !add.fit_cpu_kernel(rows, features)
        {
            return Ok(None);
        }
        let (storage, layout) = x.storage_and_layout();
        let x_cells = held_f32_cells(&storage, layout)?;
        let bias = add.bias.map(Tensor::storage_and_layout);
        let residual = add.residual.map(Tensor::storage_and_layout);
        let bias = bias.as_ref().map(|(s, l)| held_f32_cells(s, l)).transpose()?;
        let residual = residual.as_ref().map(|(s, l)| held_f32_cells(s, l)).transpose()?;
        if x_cells.len() != rows * depth {
            bail!(
                "prepacked product: x holds {} cells, not {rows} × {depth}",
                x_cells.len()
            );
        }
        let mut out: Vec<f32> = Vec::with_capacity(rows * features);
        let dst = SharedOut(out.as_mut_ptr());
        let threads = candle_core::utils::get_num_threads().min(rayon::current_num_threads());
        let tasks = tasks(features.div_ceil(MR), rows.div_ceil(NR), threads);
        let kc = depth_block(features, rows, depth);
        let addends = (bias.is_some() || residual.is_some()).then_some((bias, residual));
        // SAFETY: x holds rows × depth cells (checked), the panels cover the features,
        // the addends' lengths were checked, and each task writes only its own rows ×
        // panels of `out`.
        let run = |task: &Task| unsafe { self.task(task, x_cells, rows, kc, dst, addends) };
        if threads > 1 {
            tasks.par_iter().for_each(run);
        } else {
            tasks.iter().for_each(run);
        }
        // SAFETY: the tasks cover every row and every feature, and each wrote its cells.
        unsafe { out.set_len(rows * features) };
        Ok(Some(Tensor::from_vec(out, (rows, features), &Device::Cpu)?))
    }

    /// One task's cells of `out [rows, features]`: for each block of the depth in order
    /// (the first writes, the later ones add, as gemm's `alpha` 0 then 1), each block of
    /// six rows against each of the task's panels; after the last, the addends (bias,
    /// residual) of those six rows while they are in the core's L1.
    ///
    /// # Safety
    /// `x` holds `rows × depth` cells; `out` has room for `rows × features` cells, of
    /// which no other task touches this task's; the bias holds `features` cells and the
    /// residual `rows × features`.
    unsafe fn task(
        &self,
        task: &Task,
        x: &[f32],
        rows: usize,
        kc: usize,
        out: SharedOut,
        addends: Option<AddendCells>,
    ) {
        let kernels = &gemm_f32::microkernel::avx512f::f32::UKR;
        let (features, depth) = (self.features, self.depth);
        let panels = self.buf[self.start..].as_ptr();
        let cols = (task.panels.0 * MR, (task.panels.1 * MR).min(features));
        let mut d = 0;
        while d < depth {
            let kb = kc.min(depth - d);
            let (alpha, status) = if d == 0 { (0.0, 0) } else { (1.0, 1) };
            for q in task.rows.0..task.rows.1 {
                let r0 = q * NR;
                let nq = NR.min(rows - r0);
                for p in task.panels.0..task.panels.1 {
                    let f0 = p * MR;
                    let mp = MR.min(features - f0);
                    let kernel = kernels[mp.div_ceil(16) - 1][nq - 1];
                    kernel(
                        mp,
                        nq,
                        kb,
                        out.at(r0 * features + f0),
                        panels.add(p * MR * depth + d * MR),
                        x.as_ptr().add(r0 * depth + d),
                        features as isize,
                        1,
                        MR as isize,
                        1,
                        depth as isize,
                        alpha,
                        1.0,
                        status,
                        false,
                        false,
                        false,
                        std::ptr::null(),
                    );
                }
                if let (true, Some((bias, residual))) = (d + kb == depth, addends) {
                    add_to_block(out, features, (r0, r0 + nq), cols, bias, residual);
                }
            }
            d += kb;
        }
    }
}

/// The cells of a product's bias (`[features]`) and residual (`[rows, features]`).
type AddendCells<'a> = (Option<&'a [f32]>, Option<&'a [f32]>);

/// A block of work: panels `[p0, p1)` against row blocks (of six rows) `[q0, q1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Task {
    panels: (usize, usize),
    rows: (usize, usize),
}

/// Tasks covering `panels × row_blocks`: on several threads about four tasks per thread
/// (groups of up to [`MAX_GROUP`] panels, rows split where the panels are few), on one
/// thread groups of [`MAX_GROUP`] panels over all rows.
fn tasks(panels: usize, row_blocks: usize, threads: usize) -> Vec<Task> {
    let (group, row_splits) = if threads > 1 {
        let group = (panels / (4 * threads)).clamp(1, MAX_GROUP);
        let groups = panels.div_ceil(group);
        (group, (4 * threads).div_ceil(groups).clamp(1, row_blocks))
    } else {
        (panels.min(MAX_GROUP), 1)
    };
    let rows_per = row_blocks.div_ceil(row_splits);
    let mut tasks = Vec::new();
    for p0 in (0..panels).step_by(group) {
        for q0 in (0..row_blocks).step_by(rows_per) {
            tasks.push(Task {
                panels: (p0, (p0 + group).min(panels)),
                rows: (q0, (q0 + rows_per).min(row_blocks)),
            });
        }
    }
    tasks
}

/// The block of the depth gemm (0.19) sums in one kernel call for the row-major product
/// `[rows, depth] · [depth, features]`, which it computes transposed (`m = features`,
/// `n = rows`): `min(depth, 512)` on its path for `m, n ≤ 64`, else its cache rule.
fn depth_block(features: usize, rows: usize, depth: usize) -> usize {
    if features <= 64 && rows <= 64 {
        depth.min(512)
    } else {
        gemm_common::cache::kernel_params(features, rows, depth, MR, NR, std::mem::size_of::<f32>()).kc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::matmul::{matmul, matmul_add};
    use crate::clip::ops::testutil::{bits, rand_tensor};

    /// Shapes `(rows, out, in)`: partial panels and row blocks, several depth blocks
    /// (in = 1100 > 512), the small-size blocking (out, rows ≤ 64), a text tower's.
    const SHAPES: [(usize, usize, usize); 8] = [
        (7, 64, 40),
        (13, 40, 33),
        (30, 64, 600),
        (60, 200, 1100),
        (66, 96, 700),
        (319, 512, 2048),
        (5, 130, 60),
        (2, 300, 140),
    ];

    #[test]
    fn prepacked_products_give_gemms_bits() {
        for (i, &(rows, out, inp)) in SHAPES.iter().enumerate() {
            let w = rand_tensor(&[out, inp], 10 + i as u64, 1.0);
            let Some(packed) = Prepacked::new(&w).unwrap() else {
                eprintln!("no AVX-512F here: nothing to compare");
                return;
            };
            let x = rand_tensor(&[rows, inp], 20 + i as u64, 1.0);
            let bias = rand_tensor(&[out], 30 + i as u64, 1.0);
            let residual = rand_tensor(&[rows, out], 40 + i as u64, 1.0);
            let dy = rand_tensor(&[rows, out], 50 + i as u64, 1.0);
            let wt = w.t().unwrap();
            let add = Addends {
                bias: Some(&bias),
                residual: Some(&residual),
            };
            let fwd = packed.forward(&x, add).unwrap().expect("forward applies");
            assert_eq!(
                bits(&fwd),
                bits(&matmul_add(&x, &wt, add).unwrap()),
                "forward {rows}×{out}×{inp}"
            );
            let plain = packed.forward(&x, Addends::default()).unwrap().unwrap();
            assert_eq!(
                bits(&plain),
                bits(&x.matmul(&wt).unwrap()),
                "plain forward {rows}×{out}×{inp}"
            );
            let bwd = packed.backward(&dy).unwrap().expect("backward applies");
            assert_eq!(
                bits(&bwd),
                bits(&matmul(&dy, &w).unwrap()),
                "backward {rows}×{out}×{inp}"
            );
        }
    }

    #[test]
    fn shapes_outside_gemms_general_path_are_declined() {
        let w = rand_tensor(&[8, 16], 1, 1.0);
        let Some(packed) = Prepacked::new(&w).unwrap() else {
            return;
        };
        // One row, 8 · 20 ≤ 256 cells (gemm's horizontal kernel), or more rows than
        // gemm's own blocking is slower at: the caller's turn.
        for rows in [1, 20, MAX_ROWS + 1] {
            let x = rand_tensor(&[rows, 16], 2, 1.0);
            assert!(packed.forward(&x, Addends::default()).unwrap().is_none());
        }
        let wide = rand_tensor(&[3, 17], 3, 1.0);
        assert!(
            packed.forward(&wide, Addends::default()).unwrap().is_none(),
            "wrong width"
        );
        let x = rand_tensor(&[40, 16], 4, 1.0);
        assert!(packed.forward(&x, Addends::default()).unwrap().is_some());
        assert!(
            packed
                .forward(&x.t().unwrap(), Addends::default())
                .unwrap()
                .is_none(),
            "not contiguous"
        );
    }

    #[test]
    fn tasks_cover_every_cell_once() {
        for (panels, row_blocks, threads) in [
            (32, 54, 2),
            (8, 107, 2),
            (1, 3, 2),
            (1, 1, 4),
            (24, 54, 1),
            (3, 1, 2),
        ] {
            let mut seen = vec![0u8; panels * row_blocks];
            for t in tasks(panels, row_blocks, threads) {
                assert!(t.panels.0 < t.panels.1 && t.rows.0 < t.rows.1, "{t:?}");
                for p in t.panels.0..t.panels.1 {
                    for q in t.rows.0..t.rows.1 {
                        seen[p * row_blocks + q] += 1;
                    }
                }
            }
            assert!(
                seen.iter().all(|&s| s == 1),
                "{panels} × {row_blocks} on {threads}"
            );
        }
    }
}

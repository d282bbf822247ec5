//! `a · b` for 2-D f32 CPU tensors, with candle's very gemm call but without zeroing the
//! output first.
//!
//! candle allocates every matmul output as `vec![0; m·n]` and then calls gemm with
//! `read_dst = false`, which overwrites every cell: the zeroing is pure cost (about 10 %
//! of a demo-size LoRA run's main thread, mostly `memset`). [`matmul`] makes the same
//! gemm call — same m, n, k, strides, `alpha`, `beta` and parallelism — into
//! uninitialized memory, or, for products of a few hundred rows, one single-threaded
//! call per thread on its own block of columns ([`column_blocks`]); either way its
//! result is bit for bit candle's (the tests compare the bits). Anything else (other
//! devices or dtypes, batched operands) goes to candle.
//!
//! [`matmul_add`] also adds a bias row and a residual to the product, each block of
//! columns on the thread that computed it while the block is still in its cache: the
//! bits of the separate additions, without their passes over memory on one thread.

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::attention::SharedOut;
use super::kernels::{held_f32_cells, wide_simd};

/// `a [M, K] · b [K, N] → [M, N]`, bitwise equal to `a.matmul(b)`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !own_kernel_applies(a, b)? {
        return Ok(a.matmul(b)?);
    }
    Ok(a.apply_op2_no_bwd(b, &UninitMatMul::default())?)
}

/// Whether [`UninitMatMul`] takes the product: 2-D non-empty f32 CPU operands.
fn own_kernel_applies(a: &Tensor, b: &Tensor) -> Result<bool> {
    Ok(a.device().is_cpu()
        && b.device().is_cpu()
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && a.rank() == 2
        && b.rank() == 2
        && a.dim(1)? == b.dim(0)?
        && a.dim(1)? > 0
        && a.dim(0)? > 0
        && b.dim(1)? > 0)
}

/// What [`matmul_add`] adds to a product `[M, N]`: a bias `[N]` to every row, then a
/// residual `[M, N]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Addends<'a> {
    /// Added to every row first.
    pub bias: Option<&'a Tensor>,
    /// Added last.
    pub residual: Option<&'a Tensor>,
}

impl Addends<'_> {
    /// Whether the CPU kernels can add these to a `[m, n]` product in its pass: each
    /// present addend a contiguous f32 CPU tensor of its shape (`[n]`, `[m, n]`).
    pub(super) fn fit_cpu_kernel(&self, m: usize, n: usize) -> bool {
        let fits = |t: Option<&Tensor>, dims: &[usize]| {
            t.is_none_or(|t| {
                t.device().is_cpu() && t.dtype() == DType::F32 && t.dims() == dims && t.is_contiguous()
            })
        };
        fits(self.bias, &[n]) && fits(self.residual, &[m, n])
    }
}

/// `residual + (a · b + bias)`, bitwise equal to `matmul(a, b)?.broadcast_add(bias)?`
/// followed by `residual + …` (each addition one rounding, as there). On the CPU in f32
/// both are added to each block of columns right after its product, on the thread that
/// computed it; elsewhere (or for operands of other shapes) the separate operations run.
pub fn matmul_add(a: &Tensor, b: &Tensor, add: Addends) -> Result<Tensor> {
    if own_kernel_applies(a, b)? {
        let (m, n) = (a.dim(0)?, b.dim(1)?);
        if add.fit_cpu_kernel(m, n) {
            let op = UninitMatMul {
                bias: add.bias.cloned(),
                residual: add.residual.cloned(),
            };
            return Ok(a.apply_op2_no_bwd(b, &op)?);
        }
    }
    let mut y = matmul(a, b)?;
    if let Some(bias) = add.bias {
        y = y.broadcast_add(bias)?;
    }
    if let Some(r) = add.residual {
        y = (r + y)?;
    }
    Ok(y)
}

/// True when every row of `x [R, k] · W [k, n]` (row-major output, as every matmul of
/// the towers) gets the same bits for any row count `R ≥ min_rows` on the CPU: gemm
/// (0.19) picks the same kernel and the same blocking of the inner dimension for all of
/// them. gemm transposes a row-major product, so its "m" is our `n` and its "n" our `R`;
/// per output cell the kernel accumulates over `k` in order, one `kc`-block after the
/// other, and threads split rows and columns, never `k`. What depends on `R`:
/// * the horizontal kernel (dot products summed across SIMD lanes) for `n·R ≤ 256`;
/// * the small-size shortcut for `n ≤ 64` and `R ≤ 64`, which blocks `k` by 512 where
///   the general path may block it otherwise — the same when `k ≤ 512`;
/// * matrix-vector kernels for `R = 1` (excluded by `min_rows ≥ 2`).
///
/// `k ≤ 2` uses the same kernel for every `R`.
pub fn rows_compute_alike(n: usize, k: usize, min_rows: usize) -> bool {
    let never_horizontal = n.saturating_mul(min_rows) > 256;
    let same_k_blocks = k <= 512 || n > 64 || min_rows > 64;
    min_rows >= 2 && (k <= 2 || (never_horizontal && same_k_blocks))
}

/// True when `x [rows, k] · B [k, n]` gets the same bits whether `B` is the transposed
/// view of a row-major `W [n, k]` (the towers' layout) or a row-major copy of `Wᵀ`. gemm
/// (0.19) copies either layout into the same packed panels or reads it in place, and
/// the kernel then sums every cell over `k` in the same order; only its small-size paths
/// pick a kernel by the operands' strides: matrix-vector kernels for one row or one
/// column (`rows` or `n` ≤ 1), the horizontal kernel for `n·rows ≤ 256`, and the
/// `k ≤ 2` path. Those are ruled out here.
pub fn layouts_compute_alike(rows: usize, n: usize, k: usize) -> bool {
    rows >= 2 && n >= 2 && k > 2 && n.saturating_mul(rows) > 256
}

/// Row counts up to which [`column_blocks`] splits a product: there one
/// single-threaded gemm per thread and block of columns beat gemm's own threading by
/// 7–40 % (text-encoder shapes, 100–1 600 rows, 2026-12-05), because each thread then
/// packs only its own block of the right operand instead of all of it; at the image
/// tower's 6 304 rows both ran alike.
const SPLIT_MAX_ROWS: usize = 2048;

/// Rows per task when the addends of an unsplit product are added in parallel.
const ADD_ROWS: usize = 64;

/// The blocks of columns `[c0, c1)` in which `threads` threads compute `[m, k] · [k, n]`,
/// each block by its own single-threaded gemm; the whole product as one block where a
/// split does not pay ([`SPLIT_MAX_ROWS`], fewer than 128 columns) or would change bits.
/// gemm computes a cell of a block as it does in the whole product (the kernel sums over
/// `k` in order, one `kc`-block after the other, and `kc` depends on `k` alone) except
/// on its small-size paths, which pick kernels by shape: matrix-vector kernels for one
/// row or column, the horizontal kernel for `rows · cols ≤ 256`, the `k ≤ 2` path, and
/// the shortcut for `rows, cols ≤ 64` that blocks `k` by 512 (the same when `k ≤ 512`).
/// Blocks are multiples of 16 columns (the kernel's SIMD width).
fn column_blocks(m: usize, n: usize, k: usize, threads: usize) -> Vec<(usize, usize)> {
    let whole = vec![(0, n)];
    if threads < 2 || !(2..=SPLIT_MAX_ROWS).contains(&m) || n < 128 || k <= 2 {
        return whole;
    }
    let width = n.div_ceil(threads).div_ceil(16) * 16;
    let blocks: Vec<(usize, usize)> = (0..n)
        .step_by(width)
        .map(|c0| (c0, (c0 + width).min(n)))
        .collect();
    let alike = |cols: usize| cols >= 2 && cols * m > 256 && (k <= 512 || m > 64 || cols > 64);
    if blocks.iter().all(|&(c0, c1)| alike(c1 - c0)) {
        blocks
    } else {
        whole
    }
}

/// The custom op behind [`matmul`] and [`matmul_add`] (only called with the shapes they
/// checked): the product, then the addends, if any, per block of columns.
#[derive(Default)]
struct UninitMatMul {
    /// `[N]`, contiguous f32 on the CPU.
    bias: Option<Tensor>,
    /// `[M, N]`, contiguous f32 on the CPU.
    residual: Option<Tensor>,
}

/// Adds the bias `[n]` and then the residual `[m, n]` (either may be absent) to rows
/// `r0..r1`, columns `c0..c1` of `out` (`[m, n]` row-major), cell by cell: `x + (y + b)`
/// (an addition rounds alike in either order), as `broadcast_add` and then `+` round them.
///
/// # Safety
/// `out` points to `m·n` initialized cells of which this call alone touches rows
/// `r0..r1`, columns `c0..c1`; `r1 ≤ m`, `c1 ≤ n`, `bias.len() == n`,
/// `residual.len() == m·n`.
pub(super) unsafe fn add_to_block(
    out: SharedOut,
    n: usize,
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) {
    let bias = bias.map(|b| &b[c0..c1]);
    for r in r0..r1 {
        let row = std::slice::from_raw_parts_mut(out.at(r * n + c0), c1 - c0);
        add_row(row, bias, residual.map(|x| &x[r * n + c0..r * n + c1]));
    }
}

wide_simd! {
    /// `y ← (y + b) + x` cell by cell in one pass, either addend optional: each addition
    /// one rounding, as the separate passes (`broadcast_add`, then the residual's `+`).
    fn add_row(y: &mut [f32], bias: Option<&[f32]>, residual: Option<&[f32]>) {
        match (bias, residual) {
            (Some(b), Some(x)) => {
                for ((y, b), x) in y.iter_mut().zip(b).zip(x) {
                    *y = (*y + *b) + *x;
                }
            }
            (Some(b), None) => y.iter_mut().zip(b).for_each(|(y, b)| *y += *b),
            (None, Some(x)) => y.iter_mut().zip(x).for_each(|(y, x)| *y += *x),
            (None, None) => {}
        }
    }
}

impl CustomOp2 for UninitMatMul {
    fn name(&self) -> &'static str {
        "matmul-uninit"
    }

    fn cpu_fwd(
        &self,
        a_s: &CpuStorage,
        a_l: &Layout,
        b_s: &CpuStorage,
        b_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = a_l.shape().dims2()?;
        let (k2, n) = b_l.shape().dims2()?;
        if k != k2 || m == 0 || n == 0 || k == 0 {
            candle_core::bail!("matmul-uninit: shapes [{m}, {k}] · [{k2}, {n}] do not apply");
        }
        let a = &a_s.as_slice::<f32>()?[a_l.start_offset()..];
        let b = &b_s.as_slice::<f32>()?[b_l.start_offset()..];
        let (a_rs, a_cs) = (a_l.stride()[0], a_l.stride()[1]);
        let (b_rs, b_cs) = (b_l.stride()[0], b_l.stride()[1]);
        // The operands' farthest cells must lie inside their slices (candle's layouts
        // guarantee it; checked so that a bad layout is an error, not a wild read).
        let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
        if last(m, k, a_rs, a_cs) >= a.len() || last(k, n, b_rs, b_cs) >= b.len() {
            candle_core::bail!("matmul-uninit: a layout reaches past its storage");
        }
        // As candle's CPU matmul: every thread rayon would use, or none.
        let threads = candle_core::utils::get_num_threads();
        let parallelism = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        let dst = SharedOut(out.as_mut_ptr());
        // Columns c0..c1 of the product into the same columns of out.
        // SAFETY (for every call below): the strides and bounds of a and b were checked
        // above, and c0 < c1 ≤ n; out has room for m·n cells in row-major order
        // (dst_rs = n, dst_cs = 1). With read_dst = false gemm sets alpha to zero and
        // never reads a cell before writing it (the k-blocks after the first accumulate
        // onto cells the first block wrote), and it writes every cell of its columns.
        let columns = |c0: usize, c1: usize, parallelism: Parallelism| unsafe {
            gemm(
                m,
                c1 - c0,
                k,
                dst.at(c0),
                1,
                n as isize,
                false,
                a.as_ptr(),
                a_cs as isize,
                a_rs as isize,
                b[c0 * b_cs..].as_ptr(),
                b_cs as isize,
                b_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        };
        // Read locks on the addends' storages, held until the product is done (no
        // tensor of the towers is ever written in place, so no writer can wait on them).
        let bias = self.bias.as_ref().map(Tensor::storage_and_layout);
        let residual = self.residual.as_ref().map(Tensor::storage_and_layout);
        let bias = bias.as_ref().map(|(s, l)| held_f32_cells(s, l)).transpose()?;
        let residual = residual.as_ref().map(|(s, l)| held_f32_cells(s, l)).transpose()?;
        if bias.is_some_and(|b| b.len() != n) || residual.is_some_and(|r| r.len() != m * n) {
            candle_core::bail!("matmul-uninit: addends do not match the [{m}, {n}] product");
        }
        let adds = bias.is_some() || residual.is_some();
        // SAFETY (for both calls below): the product's cells are written by then, and
        // each call touches its own block; the lengths were checked above.
        let add = |rows, cols| unsafe { add_to_block(dst, n, rows, cols, bias, residual) };
        let blocks = column_blocks(m, n, k, threads.min(rayon::current_num_threads()));
        if blocks.len() > 1 {
            // Disjoint column blocks, one single-threaded gemm each, then its addends.
            blocks.par_iter().for_each(|&(c0, c1)| {
                columns(c0, c1, Parallelism::None);
                if adds {
                    add((0, m), (c0, c1));
                }
            });
        } else {
            columns(0, n, parallelism);
            if adds {
                (0..m.div_ceil(ADD_ROWS)).into_par_iter().for_each(|i| {
                    add((i * ADD_ROWS, ((i + 1) * ADD_ROWS).min(m)), (0, n));
                });
            }
        }
        // SAFETY: the calls above wrote every one of the m·n cells.
        unsafe { out.set_len(m * n) };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ops::testutil::{bits, rand_tensor};

    /// Every kernel gemm picks (gemv for m or n = 1, the horizontal kernel for m·n ≤ 256,
    /// several k-blocks for k > 512, the threaded main path) and every operand layout
    /// the call sites use (plain, transposed weight, transposed cotangent, a view with an
    /// offset): the bits are candle's.
    #[test]
    fn same_bits_as_candle_matmul() {
        let shapes = [
            (1, 7, 5),
            (9, 1, 33),
            (12, 16, 40),
            (16, 16, 700),
            (65, 96, 96),
            (130, 384, 96),
            (200, 96, 1300),
            (3, 520, 64),
            // Around the split into column blocks: several k-blocks, blocks of 16·j + a
            // remainder, few rows with k > 512, blocks small enough for the horizontal
            // kernel (so not split), rows just below and above the split's limit.
            (100, 1536, 512),
            (337, 512, 2048),
            (60, 200, 700),
            (2, 160, 64),
            (2048, 130, 40),
            (2049, 130, 40),
        ];
        for (seed, &(m, n, k)) in shapes.iter().enumerate() {
            let seed = seed as u64;
            let a = rand_tensor(&[m, k], 10 + seed, 1.0);
            let b = rand_tensor(&[k, n], 20 + seed, 1.0);
            let w = rand_tensor(&[n, k], 30 + seed, 1.0);
            let at = rand_tensor(&[k, m], 40 + seed, 1.0);
            let cases = [
                (a.clone(), b.clone()),
                (a.clone(), w.t().unwrap()),
                (at.t().unwrap(), b.clone()),
                (at.t().unwrap(), w.t().unwrap()),
            ];
            for (x, y) in cases {
                assert_eq!(
                    bits(&matmul(&x, &y).unwrap()),
                    bits(&x.matmul(&y).unwrap()),
                    "{m}×{k}·{k}×{n}"
                );
            }
            // A row-range view: start offset and a row stride wider than the columns.
            let wide = rand_tensor(&[m + 2, k + 3], 50 + seed, 1.0);
            let view = wide.narrow(0, 1, m).unwrap().narrow(1, 2, k).unwrap();
            assert_eq!(bits(&matmul(&view, &b).unwrap()), bits(&view.matmul(&b).unwrap()));
        }
    }

    /// Where [`rows_compute_alike`] promises it, a row's bits do not depend on the
    /// batch it is computed in (the kernels and k-blockings it distinguishes); and one
    /// case it rules out does differ, so the rule is not vacuous.
    #[test]
    fn rows_compute_alike_where_the_rule_says_so() {
        for &(n, k, min_rows) in &[
            (8, 96, 65),
            (96, 384, 65),
            (8, 128, 50),
            (64, 768, 197),
            (128, 3072, 49),
        ] {
            assert!(rows_compute_alike(n, k, min_rows), "{n} {k} {min_rows}");
            // The towers' layout: a transposed [n, k] weight.
            let w = rand_tensor(&[n, k], 7, 1.0).t().unwrap();
            let x = rand_tensor(&[3 * min_rows + 5, k], 8, 1.0);
            let whole = bits(&matmul(&x, &w).unwrap());
            for rows in [min_rows, min_rows + 1, 2 * min_rows + 3] {
                for start in [0, 3] {
                    let part =
                        bits(&matmul(&x.narrow(0, start, rows).unwrap().contiguous().unwrap(), &w).unwrap());
                    assert_eq!(
                        part,
                        whole[start * n..(start + rows) * n],
                        "{n} {k}: {rows} rows from {start}"
                    );
                }
            }
        }
        // n = 8 with 16 rows: the horizontal kernel, whose sums round differently.
        assert!(!rows_compute_alike(8, 96, 16));
        let w = rand_tensor(&[8, 96], 9, 1.0).t().unwrap();
        let x = rand_tensor(&[200, 96], 10, 1.0);
        let whole = bits(&matmul(&x, &w).unwrap());
        let part = bits(&matmul(&x.narrow(0, 0, 16).unwrap(), &w).unwrap());
        assert_ne!(
            part,
            whole[..16 * 8],
            "the horizontal kernel rounds like the main one"
        );
        assert!(!rows_compute_alike(64, 768, 10) && !rows_compute_alike(96, 96, 1));
    }

    /// Where [`layouts_compute_alike`] promises it, a row-major copy of `Wᵀ` gives the
    /// bits of W's transposed view: row counts from 2 up past the threading threshold,
    /// the towers' widths, several k-blocks. And one case it rules out (the horizontal
    /// kernel) does differ, so the rule is not vacuous.
    #[test]
    fn a_row_major_transpose_computes_like_the_view_where_the_rule_says_so() {
        let shapes = [
            (2, 129, 64),
            (3, 96, 384),
            (5, 1536, 512),
            (17, 64, 96),
            (64, 512, 2048),
            (100, 512, 512),
            (319, 2048, 512),
            (337, 512, 2048),
            (700, 96, 1300),
        ];
        for (seed, &(rows, n, k)) in shapes.iter().enumerate() {
            assert!(layouts_compute_alike(rows, n, k), "{rows} {n} {k}");
            let seed = seed as u64;
            let w = rand_tensor(&[n, k], 60 + seed, 1.0);
            let copy = w.t().unwrap().contiguous().unwrap();
            let x = rand_tensor(&[rows, k], 70 + seed, 1.0);
            assert_eq!(
                bits(&matmul(&x, &copy).unwrap()),
                bits(&matmul(&x, &w.t().unwrap()).unwrap()),
                "{rows}×{k}·{k}×{n}"
            );
        }
        assert!(!layouts_compute_alike(1, 512, 512) && !layouts_compute_alike(8, 2, 512));
        assert!(!layouts_compute_alike(16, 16, 96) && !layouts_compute_alike(64, 512, 2));
        let w = rand_tensor(&[8, 96], 80, 1.0);
        let x = rand_tensor(&[16, 96], 81, 1.0);
        assert_ne!(
            bits(&matmul(&x, &w.t().unwrap().contiguous().unwrap()).unwrap()),
            bits(&matmul(&x, &w.t().unwrap()).unwrap()),
            "the horizontal kernel (view only) rounds like the main one"
        );
    }

    /// The split's rules: blocks of 16·j columns covering all of them, and the whole
    /// product wherever a block would take a small-size path.
    #[test]
    fn column_blocks_cover_the_columns_and_avoid_the_small_paths() {
        assert_eq!(column_blocks(337, 1536, 512, 2), vec![(0, 768), (768, 1536)]);
        assert_eq!(column_blocks(100, 200, 64, 2), vec![(0, 112), (112, 200)]);
        assert_eq!(
            column_blocks(337, 512, 512, 3),
            vec![(0, 176), (176, 352), (352, 512)]
        );
        let whole = |m, n, k, t| column_blocks(m, n, k, t) == vec![(0, n)];
        assert!(whole(337, 1536, 512, 1), "one thread");
        assert!(whole(1, 1536, 512, 2), "one row: matrix-vector kernels");
        assert!(whole(3000, 1536, 512, 2), "past SPLIT_MAX_ROWS");
        assert!(whole(337, 96, 512, 2), "fewer than 128 columns");
        assert!(whole(2, 200, 64, 2), "2 × 112 cells: the horizontal kernel");
        assert!(
            whole(60, 130, 700, 2),
            "a 64-column block of 60 rows blocks k by 512"
        );
        assert!(whole(337, 512, 2, 2), "k ≤ 2");
    }

    /// The addends, made in the product's pass, give the bits of the separate
    /// `broadcast_add` and `+`: on split products and unsplit ones (one row, few
    /// columns, past the split's row limit), with either addend alone, and through the
    /// fallback for addends it does not take (a strided residual).
    #[test]
    fn addends_in_the_products_pass_give_the_separate_additions_bits() {
        for (seed, &(m, n, k)) in [
            (319, 1536, 512),
            (100, 200, 64),
            (1, 512, 64),
            (70, 96, 40),
            (2100, 130, 40),
        ]
        .iter()
        .enumerate()
        {
            let seed = 100 + 10 * seed as u64;
            let x = rand_tensor(&[m, k], seed, 1.0);
            let w = rand_tensor(&[n, k], seed + 1, 1.0).t().unwrap();
            let bias = rand_tensor(&[n], seed + 2, 1.0);
            let res = rand_tensor(&[m, n], seed + 3, 1.0);
            let prod = x.matmul(&w).unwrap();
            let with_bias = prod.broadcast_add(&bias).unwrap();
            let cases = [
                (Some(&bias), None, with_bias.clone()),
                (None, Some(&res), (&res + &prod).unwrap()),
                (Some(&bias), Some(&res), (&res + &with_bias).unwrap()),
                (None, None, prod.clone()),
            ];
            for (bias, residual, expected) in cases {
                let got = matmul_add(&x, &w, Addends { bias, residual }).unwrap();
                assert_eq!(bits(&got), bits(&expected), "{m}×{k}·{k}×{n}");
            }
        }
        let x = rand_tensor(&[64, 96], 1, 1.0);
        let w = rand_tensor(&[96, 160], 2, 1.0);
        let res_t = rand_tensor(&[160, 64], 3, 1.0).t().unwrap();
        let got = matmul_add(
            &x,
            &w,
            Addends {
                bias: None,
                residual: Some(&res_t),
            },
        )
        .unwrap();
        assert_eq!(bits(&got), bits(&(&res_t + x.matmul(&w).unwrap()).unwrap()));
    }

    #[test]
    fn other_operands_go_to_candle() {
        let a = rand_tensor(&[2, 3, 4], 1, 1.0);
        let b = rand_tensor(&[2, 4, 5], 2, 1.0);
        assert_eq!(bits(&matmul(&a, &b).unwrap()), bits(&a.matmul(&b).unwrap()));
        let a64 = a.to_dtype(DType::F64).unwrap();
        let b64 = b.to_dtype(DType::F64).unwrap();
        assert_eq!(matmul(&a64, &b64).unwrap().dims(), &[2, 3, 5]);
        let bad = rand_tensor(&[3, 4], 3, 1.0);
        assert!(matmul(&bad, &bad).is_err(), "3×4 · 3×4 must be a shape error");
        let empty = Tensor::zeros((0, 4), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert_eq!(matmul(&empty, &b.get(0).unwrap()).unwrap().dims(), &[0, 5]);
    }
}

//! TKL on the CPU in plain loops, in f32: a `[32, C]` batch is far too small to amortize
//! ~300 tensor operations, and an evaluation's thousands of rows are mostly the two
//! 20-step temperature bisections per row.
//!
//! The bisections run [`LANES`] rows at once, interleaved (element j of lane l at
//! `j·LANES + l`): every per-row reduction (max, Σ exp, Σ p·log p) stays one sequential
//! loop per lane, in the row-wise order, so each row gets exactly the bits of the
//! row-wise formulas (test `lanes_give_the_row_wise_bits`), while the lanes fill the
//! vector registers that a single row's serial sums leave idle. The bisection's decisions
//! depend on the last bits of the entropies, which is why the order is kept.

use candle_core::cpu::kernels::VecOps;
use rayon::prelude::*;

use super::super::expf::exp_in_place;
#[cfg(target_arch = "x86_64")]
use super::super::expf::x86::exp8_avx512;
use super::super::logf::ln_in_place;
use super::*;
use super::{fused, screen};
use crate::clip::kernels::wide_simd;

/// Rows per interleaved group: four vectors of eight, so that each pass's per-lane
/// running max and sums form four independent chains (measured on 10 000 × 100 logits,
/// one thread: 0.120 s with 8 lanes pass by pass, 0.098 s fused, 0.091 s fused with 32).
const LANES: usize = 32;

/// One lane's value per lane.
type Lanes = [f32; LANES];

/// `Iterator::sum` for f32 folds from −0.0 (so that a sum of −0.0 terms stays −0.0);
/// the lane sums start from the same value.
const SUM_START: f32 = -0.0;

/// `exps` = exp of `xs`, element by element, with libm's bits ([`exp_in_place`]).
fn exp_of(xs: &[f32], exps: &mut [f32]) {
    exps.copy_from_slice(xs);
    exp_in_place(exps);
}

/// log-softmax of `x / tau` into `out`, rounded as `candle_nn::ops::log_softmax`:
/// (x/τ − max) − ln Σ exp(x/τ − max).
fn log_softmax(x: &[f32], tau: f32, out: &mut [f32], exps: &mut [f32]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = v / tau);
    let m = out.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    out.iter_mut().for_each(|o| *o -= m);
    exp_of(out, exps);
    let ln_sum = exps.iter().copied().sum::<f32>().ln();
    out.iter_mut().for_each(|o| *o -= ln_sum);
}

/// [`log_softmax`] of [`LANES`] interleaved rows, each with its own τ.
#[inline(always)]
fn lanes_log_softmax(x: &[f32], tau: &Lanes, out: &mut [f32], exps: &mut [f32]) {
    for (o, v) in out.chunks_exact_mut(LANES).zip(x.chunks_exact(LANES)) {
        for l in 0..LANES {
            o[l] = v[l] / tau[l];
        }
    }
    let mut m = [f32::NEG_INFINITY; LANES];
    for o in out.chunks_exact(LANES) {
        for l in 0..LANES {
            m[l] = m[l].max(o[l]);
        }
    }
    for o in out.chunks_exact_mut(LANES) {
        for l in 0..LANES {
            o[l] -= m[l];
        }
    }
    exp_of(out, exps);
    let mut sum = [SUM_START; LANES];
    for e in exps.chunks_exact(LANES) {
        for l in 0..LANES {
            sum[l] += e[l];
        }
    }
    let ln_sum = sum.map(f32::ln);
    for o in out.chunks_exact_mut(LANES) {
        for l in 0..LANES {
            o[l] -= ln_sum[l];
        }
    }
}

/// Entropy of softmax(x/τ) per lane: −Σ p·log p, in the row-wise order. With AVX-512
/// in [`lanes_entropy_fused`]'s three passes, else in [`lanes_entropy_passes`]'.
#[inline(always)]
fn lanes_entropy(x: &[f32], tau: &Lanes, buf: &mut [f32], exps: &mut [f32]) -> Lanes {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the function is compiled for.
        return unsafe { lanes_entropy_fused(x, tau, buf) };
    }
    lanes_entropy_passes(x, tau, buf, exps)
}

/// [`lanes_entropy`] in three passes over the lanes instead of nine ([`fused::entropy`]),
/// the exponentials kept in registers ([`exp8_avx512`]) instead of written out and read
/// back. Every element sees the same operations
/// and every lane's sums add the same terms in the same order, so the bits are those of
/// [`lanes_entropy_passes`] (test `fused_entropy_gives_the_bits_of_the_passes`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn lanes_entropy_fused(x: &[f32], tau: &Lanes, buf: &mut [f32]) -> Lanes {
    const { assert!(LANES.is_multiple_of(8), "exp8_avx512 takes eight lanes") };
    fused::entropy(x, tau, buf, |v: &mut Lanes| {
        for e8 in v.chunks_exact_mut(8) {
            // SAFETY: this closure runs inside a function compiled for AVX-512F, called
            // only where the CPU has it.
            unsafe { exp8_avx512(e8.try_into().expect("chunks of eight")) };
        }
    })
}

/// [`lanes_entropy`] pass by pass: [`lanes_log_softmax`], then the exponentials and the
/// sum of p·log p.
#[inline(always)]
fn lanes_entropy_passes(x: &[f32], tau: &Lanes, buf: &mut [f32], exps: &mut [f32]) -> Lanes {
    lanes_log_softmax(x, tau, buf, exps);
    exp_of(buf, exps);
    let mut sum = [SUM_START; LANES];
    for (e, lp) in exps.chunks_exact(LANES).zip(buf.chunks_exact(LANES)) {
        for l in 0..LANES {
            sum[l] += e[l] * lp[l];
        }
    }
    sum.map(|s| -s)
}

/// Per lane, τ with H(softmax(x/τ)) ≈ target: 20 bisection steps on [0.05, 20]. With
/// `screen` (the CPU has AVX-512F), each step's decisions come from [`screen`]'s fast
/// entropy while every lane is farther than [`screen::margin`] from its target, which
/// makes them the exact entropy's decisions; from the first step where one is not, every
/// step uses the exact entropy.
#[inline(always)]
fn lanes_solve(x: &[f32], target: &Lanes, buf: &mut [f32], exps: &mut [f32], screen: bool) -> Lanes {
    let (mut lo, mut hi) = ([TAU_LOW as f32; LANES], [TAU_HIGH as f32; LANES]);
    let mut screening = Screening::new(screen && x.iter().all(|v| v.is_finite()), x.len() / LANES);
    for _ in 0..BISECTION_STEPS {
        let mut mid = [0f32; LANES];
        for l in 0..LANES {
            mid[l] = (lo[l] + hi[l]) / 2.0;
        }
        let h = match screening.entropy(x, &mid, target, buf) {
            Some(h) => h,
            None => lanes_entropy(x, &mid, buf, exps),
        };
        for l in 0..LANES {
            if h[l] > target[l] {
                hi[l] = mid[l];
            } else {
                lo[l] = mid[l];
            }
        }
    }
    std::array::from_fn(|l| (lo[l] + hi[l]) / 2.0)
}

/// A bisection's screen ([`screen`]): on while every step so far could be decided by the
/// fast entropy.
struct Screening {
    on: bool,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    margin: f32,
}

impl Screening {
    /// `on` only where `screen::available()` holds and the row values are finite.
    fn new(on: bool, classes: usize) -> Self {
        Screening {
            on,
            margin: screen::margin(classes),
        }
    }

    /// The fast entropies at `tau` when every lane is farther than the margin from its
    /// target (so they decide as the exact ones would); none, and off from then on,
    /// when some lane is not.
    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn entropy(&mut self, x: &[f32], tau: &Lanes, target: &Lanes, buf: &mut [f32]) -> Option<Lanes> {
        #[cfg(target_arch = "x86_64")]
        if self.on {
            // SAFETY: `on` is set only where `screen::available()` holds.
            let fast = unsafe { screen::lanes_entropy(x, tau, buf) };
            if (0..LANES).all(|l| (fast[l] - target[l]).abs() > self.margin) {
                return Some(fast);
            }
        }
        self.on = false;
        None
    }
}

/// Scratch of one task: interleaved inputs and work rows for [`LANES`] rows, and the
/// row-wise rows of the KL step.
struct Scratch {
    f: Vec<f32>,
    z: Vec<f32>,
    buf: Vec<f32>,
    exps: Vec<f32>,
    log_t: Vec<f32>,
    log_s: Vec<f32>,
    /// Whether the bisections screen their decisions ([`lanes_solve`]).
    screen: bool,
}

impl Scratch {
    fn new(c: usize) -> Self {
        Self::with_screen(c, screen::available())
    }

    fn with_screen(c: usize, screen: bool) -> Self {
        let lanes = || vec![0f32; c * LANES];
        Scratch {
            screen,
            f: lanes(),
            z: lanes(),
            buf: lanes(),
            exps: lanes(),
            log_t: vec![0f32; c],
            log_s: vec![0f32; c],
        }
    }
}

wide_simd! {
    /// h*, τ_z and τ_f of the [`LANES`] interleaved rows in `s.f`, `s.z`.
    fn solve_lanes(s: &mut Scratch, out: &mut [[f32; 3]; LANES]) {
        let one = [1.0f32; LANES];
        let hf = lanes_entropy(&s.f, &one, &mut s.buf, &mut s.exps);
        let hz = lanes_entropy(&s.z, &one, &mut s.buf, &mut s.exps);
        let h: Lanes = std::array::from_fn(|l| (hf[l] + hz[l]) / 2.0);
        let screen = s.screen;
        let tz = lanes_solve(&s.z, &h, &mut s.buf, &mut s.exps, screen);
        let tf = lanes_solve(&s.f, &h, &mut s.buf, &mut s.exps, screen);
        for l in 0..LANES {
            out[l] = [h[l], tz[l], tf[l]];
        }
    }
}

/// One row's KL at the solved temperatures, its loss gradient written into `grad` when
/// given (already divided by the batch size `b`); returns [h*, τ_z, τ_f, KL].
fn kl_row(
    fr: &[f32],
    zr: &[f32],
    b: usize,
    [h, tz, tf]: [f32; 3],
    grad: Option<&mut [f32]>,
    s: &mut Scratch,
) -> [f32; 4] {
    let c = fr.len();
    let (log_t, log_s) = (&mut s.log_t, &mut s.log_s);
    let (p_t, p_s) = (&mut s.buf[..c], &mut s.exps[..c]);
    let floor = PROB_FLOOR as f32;
    log_softmax(zr, tz, log_t, p_s);
    log_softmax(fr, tf, log_s, p_s);
    exp_of(log_t, p_t);
    exp_of(log_s, p_s);
    // The log-softmax rows are spent: they take the logarithms of the floored
    // probabilities, computed eight at a time ([`ln_in_place`], libm's bits).
    for (l, &p) in log_t.iter_mut().zip(p_t.iter()) {
        *l = p.max(floor);
    }
    for (l, &p) in log_s.iter_mut().zip(p_s.iter()) {
        *l = p.max(floor);
    }
    ln_in_place(log_t);
    ln_in_place(log_s);
    let (mut k, mut mass) = (0f32, 0f32);
    for (((&pt, &ps), &ln_t), &ln_s) in p_t.iter().zip(p_s.iter()).zip(log_t.iter()).zip(log_s.iter()) {
        k += pt * (ln_t - ln_s);
        if ps >= floor {
            mass += pt;
        }
    }
    for ((g, &pt), &ps) in grad.into_iter().flatten().zip(p_t.iter()).zip(p_s.iter()) {
        let live = if ps >= floor { pt } else { 0.0 };
        *g = (ps * mass - live) / (tf * b as f32);
    }
    [h, tz, tf, k]
}

/// [`LANES`] rows from `first` (`grad`, when given, holds theirs): a short last group
/// repeats its last row in the spare lanes, whose results are dropped.
#[allow(clippy::too_many_arguments)]
fn rows_group(
    fv: &[f32],
    zv: &[f32],
    b: usize,
    c: usize,
    first: usize,
    mut grad: Option<&mut [f32]>,
    s: &mut Scratch,
) -> Vec<[f32; 4]> {
    let rows = LANES.min(b - first);
    for l in 0..LANES {
        let r = first + l.min(rows - 1);
        for j in 0..c {
            s.f[j * LANES + l] = fv[r * c + j];
            s.z[j * LANES + l] = zv[r * c + j];
        }
    }
    let mut solved = [[0f32; 3]; LANES];
    solve_lanes(s, &mut solved);
    (0..rows)
        .map(|l| {
            let r = first + l;
            let g = grad.as_deref_mut().map(|g| &mut g[l * c..(l + 1) * c]);
            kl_row(
                &fv[r * c..(r + 1) * c],
                &zv[r * c..(r + 1) * c],
                b,
                solved[l],
                g,
                s,
            )
        })
        .collect()
}

/// [h*, τ_z, τ_f, KL] per row, and the loss gradient when `want_grad`. Groups of rows
/// are independent, so they run in parallel: the same bits on any number of threads.
fn solve_rows(fv: &[f32], zv: &[f32], b: usize, c: usize, want_grad: bool) -> (Vec<[f32; 4]>, Vec<f32>) {
    if c == 0 || b == 0 {
        return (Vec::new(), Vec::new());
    }
    if !want_grad {
        let rows = (0..b.div_ceil(LANES))
            .into_par_iter()
            .map_init(
                || Scratch::new(c),
                |s, i| rows_group(fv, zv, b, c, i * LANES, None, s),
            )
            .flatten_iter()
            .collect();
        return (rows, Vec::new());
    }
    let mut grad = vec![0f32; b * c];
    let rows = grad
        .par_chunks_mut(LANES * c)
        .enumerate()
        .map_init(
            || Scratch::new(c),
            |s, (i, g)| rows_group(fv, zv, b, c, i * LANES, Some(g), s),
        )
        .flatten_iter()
        .collect();
    (rows, grad)
}

/// KL per sample only (evaluation): [`tkl`]'s `kl_per_sample` bits without the gradient.
pub(super) fn kl_per_sample(f: &Tensor, z: &Tensor) -> Result<Tensor> {
    let (b, c) = f.dims2()?;
    let fv: Vec<f32> = f.flatten_all()?.to_vec1()?;
    let zv: Vec<f32> = z.flatten_all()?.to_vec1()?;
    let (rows, _) = solve_rows(&fv, &zv, b, c, false);
    Ok(Tensor::from_vec(
        rows.iter().map(|r| r[3]).collect::<Vec<f32>>(),
        b,
        f.device(),
    )?)
}

/// candle's `softmax_last_dim` of one row on the CPU, in its operation order: candle's
/// row max, `exp(x − max)` with the standard library's `exp`, candle's row sum, division.
fn candle_softmax_row(x: &[f32], out: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    // SAFETY: `x` holds `x.len()` > 0 cells.
    unsafe { f32::vec_reduce_max(x.as_ptr(), &mut max, x.len()) };
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = (v - max).exp());
    let mut sum = 0f32;
    // SAFETY: `out` holds as many cells as `x`.
    unsafe { f32::vec_reduce_sum(out.as_ptr(), &mut sum, out.len()) };
    out.iter_mut().for_each(|o| *o /= sum);
}

/// [`super::kl_loss`] in one pass per row, with the bits of its tensor operations
/// (softmax at τ = 1, `clamp(1e-12, ∞)` as candle's maximum and minimum, `ln`, the row's
/// sum and the batch mean as candle reduces and scales them): evaluation calls it for
/// every test chunk, where ten tensor operations over `[B, C]` cost more than the sums.
pub(super) fn kl_loss(f: &[f32], z: &[f32], b: usize, c: usize) -> f32 {
    let floor = PROB_FLOOR as f32;
    // candle's maximum with the floor; its minimum with +∞ returns every value unchanged.
    let clamp = |p: f32| if p < floor { floor } else { p };
    let (mut p_t, mut p_s, mut terms) = (vec![0f32; c], vec![0f32; c], vec![0f32; c]);
    let (mut ln_t, mut ln_s) = (vec![0f32; c], vec![0f32; c]);
    let mut kl = vec![0f32; b];
    for (r, k) in kl.iter_mut().enumerate() {
        candle_softmax_row(&z[r * c..(r + 1) * c], &mut p_t);
        candle_softmax_row(&f[r * c..(r + 1) * c], &mut p_s);
        for ((lt, ls), (&pt, &ps)) in ln_t.iter_mut().zip(ln_s.iter_mut()).zip(p_t.iter().zip(&p_s)) {
            (*lt, *ls) = (clamp(pt), clamp(ps));
        }
        ln_in_place(&mut ln_t);
        ln_in_place(&mut ln_s);
        for (((t, &pt), &lt), &ls) in terms.iter_mut().zip(&p_t).zip(&ln_t).zip(&ln_s) {
            *t = pt * (lt - ls);
        }
        // SAFETY: `terms` holds c > 0 cells.
        unsafe { f32::vec_reduce_sum(terms.as_ptr(), k, c) };
    }
    let mut total = 0f32;
    // SAFETY: `kl` holds b > 0 cells.
    unsafe { f32::vec_reduce_sum(kl.as_ptr(), &mut total, b) };
    total * (1.0 / b as f64) as f32 + 0.0
}

/// The CPU path of [`super::tkl`].
pub(super) fn tkl(f: &Tensor, z: &Tensor) -> Result<Tkl> {
    let (b, c) = f.dims2()?;
    let fv: Vec<f32> = f.flatten_all()?.to_vec1()?;
    let zv: Vec<f32> = z.flatten_all()?.to_vec1()?;
    let (rows, mut grad) = solve_rows(&fv, &zv, b, c, true);
    grad.resize(b * c, 0.0);
    let column = |n: usize| rows.iter().map(|r| r[n]).collect::<Vec<f32>>();
    let (h_star, tau_z, tau_f, kl) = (column(0), column(1), column(2), column(3));
    let dev = f.device();
    let kl = Tensor::from_vec(kl, b, dev)?;
    Ok(Tkl {
        loss: LossGrad {
            loss: kl.mean_all()?.to_scalar::<f32>()?,
            grad: Tensor::from_vec(grad, (b, c), dev)?,
        },
        h_star: Tensor::from_vec(h_star, b, dev)?,
        tau_z: Tensor::from_vec(tau_z, b, dev)?,
        tau_f: Tensor::from_vec(tau_f, b, dev)?,
        kl_per_sample: kl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ops::testutil::bits as bits_of;

    /// Uniform draws in [0, 1) from a xorshift stream seeded with `seed` (non-zero).
    fn uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut state = seed | 1;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// The row-wise formulas the lanes replace, kept as the reference.
    fn entropy(x: &[f32], tau: f32, buf: &mut [f32], exps: &mut [f32]) -> f32 {
        log_softmax(x, tau, buf, exps);
        exp_of(buf, exps);
        -exps.iter().zip(&*buf).map(|(&e, &l)| e * l).sum::<f32>()
    }

    fn solve(x: &[f32], target: f32, buf: &mut [f32], exps: &mut [f32]) -> f32 {
        let (mut lo, mut hi) = (TAU_LOW as f32, TAU_HIGH as f32);
        for _ in 0..BISECTION_STEPS {
            let mid = (lo + hi) / 2.0;
            if entropy(x, mid, buf, exps) > target {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        (lo + hi) / 2.0
    }

    /// The fused three-pass entropy gives the bits of the pass-by-pass one, over sharp,
    /// flat, tied and huge logits and temperatures across the bisection's range.
    #[test]
    fn fused_entropy_gives_the_bits_of_the_passes() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let mut next = uniform(0x2545_f491_4f6c_dd1du64);
            for c in [1, 2, 7, 100, 1000] {
                for scale in [0.0, 1e-3, 1.0, 30.0, 300.0] {
                    let mut x: Vec<f32> = (0..c * LANES).map(|_| (next() - 0.5) * scale).collect();
                    if c > 2 {
                        x[0] = -0.0;
                        x[LANES] = x[2 * LANES];
                    }
                    for tau in [TAU_LOW as f32, 0.3, 1.0, 7.7, TAU_HIGH as f32] {
                        let taus: Lanes = std::array::from_fn(|l| tau * (1.0 + l as f32 / 64.0));
                        let (mut buf, mut exps) = (vec![0f32; c * LANES], vec![0f32; c * LANES]);
                        let want = lanes_entropy_passes(&x, &taus, &mut buf, &mut exps);
                        // SAFETY: the CPU has AVX-512F, checked above.
                        let got = unsafe { lanes_entropy_fused(&x, &taus, &mut buf) };
                        assert_eq!(
                            got.map(f32::to_bits),
                            want.map(f32::to_bits),
                            "C {c}, scale {scale}, τ {tau}"
                        );
                    }
                }
            }
        }
    }

    /// Rows of logits of many kinds: CLIP-like (100 × cosines near 0.2), uniform at
    /// scales from 1e-3 to 300, one-hot-like, exact ties and −0.0.
    fn varied_rows(b: usize, c: usize, seed: u64) -> Vec<f32> {
        let mut next = uniform(seed);
        let mut v = Vec::with_capacity(b * c);
        for r in 0..b {
            let kind = r % 5;
            let scale = [1e-3, 1.0, 30.0, 300.0][(r / 5) % 4];
            for j in 0..c {
                v.push(match kind {
                    0 => 100.0 * (0.2 + 0.03 * (next() - 0.5) * 3.4),
                    1 => (next() - 0.5) * scale,
                    2 => {
                        if j == r % c {
                            scale
                        } else {
                            (next() - 0.5) * 0.1
                        }
                    }
                    3 => ((next() * 4.0).floor() - 2.0) * scale / 4.0,
                    _ => {
                        if j == 0 {
                            -0.0
                        } else {
                            (next() - 0.5) * scale
                        }
                    }
                });
            }
        }
        v
    }

    /// The screened bisections give every row's h*, τ_z, τ_f, KL and gradient the bits
    /// of the bisections that compute every step exactly.
    #[test]
    fn screened_bisections_give_the_exact_temperatures() {
        for (b, c) in [(400, 100), (200, 10), (64, 2), (64, 7), (64, 1000)] {
            let fv = varied_rows(b, c, 0x51_7cc1_b727_220a + c as u64);
            let zv = varied_rows(b, c, 0x9e37_79b9_7f4a_7c15 ^ b as u64);
            let (mut on, mut off) = (
                Scratch::with_screen(c, screen::available()),
                Scratch::with_screen(c, false),
            );
            for first in (0..b).step_by(LANES) {
                let rows = LANES.min(b - first);
                let (mut g_on, mut g_off) = (vec![0f32; rows * c], vec![0f32; rows * c]);
                let got = rows_group(&fv, &zv, b, c, first, Some(&mut g_on), &mut on);
                let want = rows_group(&fv, &zv, b, c, first, Some(&mut g_off), &mut off);
                let bits = |r: &Vec<[f32; 4]>| r.iter().map(|v| v.map(f32::to_bits)).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{b}×{c}, rows from {first}");
                let gb = |g: &Vec<f32>| g.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(gb(&g_on), gb(&g_off), "gradient, {b}×{c}, rows from {first}");
            }
        }
    }

    /// The fast entropy differs from the exact one by well under the bound the margin
    /// doubles (under a tenth of the margin here), over varied rows and temperatures.
    #[test]
    fn fast_entropy_stays_well_within_the_margin() {
        #[cfg(target_arch = "x86_64")]
        if screen::available() {
            for c in [2, 10, 100, 1000] {
                let rows = varied_rows(LANES * 4, c, 0x2545_f491_4f6c_dd1d ^ c as u64);
                let margin = screen::margin(c);
                let mut worst = 0f32;
                for group in rows.chunks_exact(LANES * c) {
                    let mut x = vec![0f32; LANES * c];
                    for l in 0..LANES {
                        for j in 0..c {
                            x[j * LANES + l] = group[l * c + j];
                        }
                    }
                    for tau in [TAU_LOW as f32, 0.1, 0.5, 1.0, 3.0, 10.0, TAU_HIGH as f32] {
                        let taus: Lanes = std::array::from_fn(|l| tau * (1.0 + l as f32 / 97.0));
                        let (mut buf, mut exps) = (vec![0f32; LANES * c], vec![0f32; LANES * c]);
                        let exact = lanes_entropy_passes(&x, &taus, &mut buf, &mut exps);
                        // SAFETY: the CPU has AVX-512F, checked above.
                        let fast = unsafe { screen::lanes_entropy(&x, &taus, &mut buf) };
                        for l in 0..LANES {
                            worst = worst.max((fast[l] - exact[l]).abs());
                        }
                    }
                }
                assert!(
                    worst < margin / 10.0,
                    "{c} classes: difference {worst:e}, margin {margin:e}"
                );
            }
        }
    }

    #[test]
    fn float_sums_start_from_negative_zero() {
        assert!([-0.0f32].iter().sum::<f32>().is_sign_negative());
        assert!(SUM_START.is_sign_negative());
    }

    /// Every row's h*, τ_z, τ_f, KL and gradient have the row-wise formulas' bits, for
    /// row counts that fill the last group, leave it short, or make a single short group,
    /// with logits from sharp to flat (including exact ties and −0.0).
    #[test]
    fn lanes_give_the_row_wise_bits() {
        let mut next = uniform(0x9e37_79b9_7f4a_7c15u64);
        for (b, c) in [(70, 100), (64, 10), (16, 100), (13, 10), (3, 7), (1, 2)] {
            let mut fv: Vec<f32> = (0..b * c).map(|_| (next() - 0.5) * 60.0).collect();
            let zv: Vec<f32> = (0..b * c)
                .map(|i| (next() - 0.5) * (5.0 + 10.0 * (i % 7) as f32))
                .collect();
            fv[0] = -0.0;
            if c > 2 {
                fv[1] = fv[2];
            }
            let f = Tensor::from_vec(fv.clone(), (b, c), &candle_core::Device::Cpu).unwrap();
            let z = Tensor::from_vec(zv.clone(), (b, c), &candle_core::Device::Cpu).unwrap();
            let got = tkl(&f, &z).unwrap();
            let (mut buf, mut exps) = (vec![0f32; c], vec![0f32; c]);
            let mut s = Scratch::new(c);
            let mut want_grad = vec![0f32; b * c];
            let mut want = Vec::new();
            for r in 0..b {
                let (fr, zr) = (&fv[r * c..(r + 1) * c], &zv[r * c..(r + 1) * c]);
                let h = (entropy(fr, 1.0, &mut buf, &mut exps) + entropy(zr, 1.0, &mut buf, &mut exps)) / 2.0;
                let (tz, tf) = (
                    solve(zr, h, &mut buf, &mut exps),
                    solve(fr, h, &mut buf, &mut exps),
                );
                want.push(kl_row(
                    fr,
                    zr,
                    b,
                    [h, tz, tf],
                    Some(&mut want_grad[r * c..(r + 1) * c]),
                    &mut s,
                ));
            }
            let want_col = |n: usize| want.iter().map(|r| r[n].to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits_of(&got.h_star), want_col(0), "h*, {b}×{c}");
            assert_eq!(bits_of(&got.tau_z), want_col(1), "τ_z, {b}×{c}");
            assert_eq!(bits_of(&got.tau_f), want_col(2), "τ_f, {b}×{c}");
            assert_eq!(bits_of(&got.kl_per_sample), want_col(3), "KL, {b}×{c}");
            let want_grad: Vec<u32> = want_grad.iter().map(|g| g.to_bits()).collect();
            assert_eq!(bits_of(&got.loss.grad), want_grad, "gradient, {b}×{c}");
            let alone = kl_per_sample(&f, &z).unwrap();
            assert_eq!(bits_of(&alone), want_col(3), "KL without the gradient, {b}×{c}");
        }
    }
}

//! Screening the temperature bisection's decisions with a cheap entropy.
//!
//! Each bisection step asks one question per row: is H(softmax(x/τ)) above the target?
//! The answer must be the one the exact f32 entropy gives (its last bits steer the
//! bisection), but most steps are far from the root, where any entropy accurate to 1e-4
//! answers alike. So a step first computes the entropy with a fast 16-lane `exp` (a few
//! ulp, [`exp16`]) in the same passes and operation order as the exact one; where every
//! lane's value lies farther from its target than [`margin`], a proven bound on the
//! difference between the two entropies, those decisions are the exact ones. The first
//! step where some lane is closer falls back to the exact entropy, for it and every later
//! step of that group (they are closer still). The temperatures keep their bits (test
//! `screened_bisections_give_the_exact_temperatures`).
//!
//! **The bound.** Both entropies compute the same y = x/τ, m = max y and u = y − m; they
//! differ only in the exponentials, each within 4u of exp (u = 2⁻²⁴; glibc's within one,
//! [`exp16`] within four: test `fast_exp_is_within_four_ulp`), so e′ and e differ by at
//! most 8u relatively. With n classes, γₖ = k·u the bound of a k-term sum's rounding, and
//! S = Σe ≥ 1 (the maximum contributes exp(0) = 1 exactly, in both):
//! * the sums S, S′ differ by (8u + 2γₙ)·S, so L = ln S by δ_L ≤ 8u + 2γₙ + 4u·L (logf's
//!   own rounding, one ulp each), with L ≤ ln n;
//! * v = u − L by δ_L + 2u·|v| (the subtraction's rounding), p = exp(v) by
//!   p·(δ_L + 2u·|v| + 8u);
//! * H = −Σ p·v (all terms of one sign, so Σ|p·v| = H ≤ ln n): the products differ by at
//!   most Σ p|v|(δ_L + 2u|v| + 8u) + Σ p(δ_L + 2u|v|) ≤ (δ_L + 10u)·H + 2u·Σ p·v² + δ_L,
//!   with p·v² = e^v·v² ≤ 4/e² < 0.55 per term, and each sum's rounding adds γₙ₊₁·H.
//!
//! [`margin`] takes H ≤ ln n + 1, a factor 1.01 for second-order terms, doubles the
//! result, and adds n·10⁻³⁵ for exponentials that fall below the normal range (absolute
//! error < 2⁻¹²⁶ each, terms of |v| ≤ 104). For 100 classes it is 3.4e-4; test
//! `fast_entropy_stays_well_within_the_margin` measures the actual differences.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// ln 2's leading bits (0.693145751953125).
#[cfg(target_arch = "x86_64")]
const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
/// ln 2 − [`LN2_HI`] (1.4286068e-6).
#[cfg(target_arch = "x86_64")]
const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
/// Cephes' `expf` polynomial: e^r ≈ 1 + r + r²·P(r), P's coefficients from r⁵ down
/// (1.9875691e-4, 1.3981999e-3, 8.3334520e-3, 4.1665796e-2, 1.6666666e-1, 0.5).
#[cfg(target_arch = "x86_64")]
const POLY: [f32; 6] = [
    f32::from_bits(0x3950_6967),
    f32::from_bits(0x3ab7_43ce),
    f32::from_bits(0x3c08_8908),
    f32::from_bits(0x3d2a_a9c1),
    f32::from_bits(0x3e2a_aaaa),
    f32::from_bits(0x3f00_0000),
];

/// The screen's threshold for rows of `classes` logits: twice the bound on the difference
/// between the fast and the exact entropy (module docs).
pub(super) fn margin(classes: usize) -> f32 {
    let u = f64::from(f32::EPSILON) / 2.0;
    let n = classes.max(1) as f64;
    let h_max = n.ln() + 1.0;
    let d_l = 8.0 + 2.0 * n + 4.0 * h_max;
    let bound = 1.01 * ((d_l + 10.0) * h_max + 1.1 * n + d_l) + 2.0 * (n + 1.0) * h_max;
    (2.0 * bound * u + n * 1e-35) as f32
}

/// Whether this CPU runs the screen (AVX-512F); elsewhere every step is exact.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// exp of 16 values within 4 ulp for arguments in [−87, 88] (Cody–Waite reduction by
/// ln 2, Cephes' degree-5 polynomial for e^r − 1 − r, scaling by 2ⁿ); below −87 it
/// returns exp(−87) (≈ 1.6e-38 instead of a smaller value: the margin's absolute term).
/// exp(0) is exactly 1.
///
/// # Safety
/// Only for callers compiled with AVX-512F enabled, on a CPU that has it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp16(v: __m512) -> __m512 {
    let x = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with trailing zero bits so that n·LN2_HI is exact.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(POLY[0]);
    for c in &POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
    let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
    _mm512_mul_ps(y, _mm512_castsi512_ps(scale))
}

/// [`exp16`] in place over a slice whose length is a multiple of 16.
///
/// # Safety
/// As [`exp16`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp_chunks(xs: &mut [f32]) {
    for c in xs.chunks_exact_mut(16) {
        let p = c.as_mut_ptr();
        _mm512_storeu_ps(p, exp16(_mm512_loadu_ps(p)));
    }
}

/// The entropy of softmax(x/τ) per lane for `N` interleaved rows (element j of lane l at
/// `j·N + l`), in the exact entropy's fused passes and order ([`super::fused::entropy`]),
/// with [`exp16`] in place of the exact `exp`. `N` is a multiple of 16; `x` must be finite.
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn lanes_entropy<const N: usize>(x: &[f32], tau: &[f32; N], buf: &mut [f32]) -> [f32; N] {
    const { assert!(N.is_multiple_of(16), "exp16 takes sixteen lanes") };
    // SAFETY (of the closure's call): it runs inside this function, compiled for
    // AVX-512F and called only where the CPU has it.
    super::fused::entropy(x, tau, buf, |v: &mut [f32; N]| unsafe { exp_chunks(v) })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// [`exp16`] of one value.
    fn fast_exp(x: f32) -> f32 {
        #[target_feature(enable = "avx512f")]
        unsafe fn one(x: f32) -> f32 {
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_set1_ps(x)));
            out[0]
        }
        // SAFETY: callers check `available()` first.
        unsafe { one(x) }
    }

    /// Every 61st float in [−87, 0] and in [0, 88], and the ends: within 4u of exp
    /// (computed in f64); exp(0) = 1 exactly; below −87 it stays at exp(−87).
    #[test]
    fn fast_exp_is_within_four_ulp() {
        if !available() {
            return;
        }
        let u = f64::from(f32::EPSILON) / 2.0;
        let mut worst = 0f64;
        for (from, to) in [(-0.0f32, -87.0f32), (0.0, 88.0)] {
            let (a, b) = (from.to_bits(), to.to_bits());
            let mut bits = a;
            while bits <= b {
                let x = f32::from_bits(bits);
                let want = f64::from(x).exp();
                let got = f64::from(fast_exp(x));
                worst = worst.max((got - want).abs() / want / u);
                bits += 61;
            }
            let want = f64::from(to).exp();
            worst = worst.max((f64::from(fast_exp(to)) - want).abs() / want / u);
        }
        assert!(worst <= 4.0, "worst relative error {worst} u");
        assert_eq!(fast_exp(0.0).to_bits(), 1f32.to_bits());
        assert_eq!(fast_exp(-0.0).to_bits(), 1f32.to_bits());
        assert_eq!(fast_exp(-200.0), fast_exp(-87.0));
        assert!(fast_exp(-87.0) < 2e-38);
    }

    #[test]
    fn the_margin_grows_with_the_classes() {
        let m100 = margin(100);
        assert!((3e-4..4e-4).contains(&m100), "{m100}");
        assert!(margin(1000) > m100 && margin(2) < m100);
    }
}

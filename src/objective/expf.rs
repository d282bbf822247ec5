//! `exp` of f32 slices with the bits of glibc's `expf` on FMA hardware, vectorized.
//!
//! TKL's per-row temperature bisections call `exp` about 80 times per logit, and
//! through the standard library each call is a call into libm: about a third of a tiny
//! prompt run's profile. The bisection's decisions depend on the last bits of the
//! entropies, so a faster approximation would change the trajectory. This module
//! computes glibc's algorithm instead (glibc ≥ 2.28 takes it from ARM's
//! optimized-routines: `x·32/ln 2 = k + r`, `exp(x) ≈ 2^(k/32) · (1 + C2·r + C1·r² +
//! C0·r³)` in double precision, rounded once to f32), with the fused multiply-adds that
//! glibc's `__expf_fma` variant uses. So on glibc x86-64 machines with FMA, which the
//! golden metrics were recorded on, every result is the bit pattern `f32::exp` returns
//! there (tests compare them, exhaustively with `--ignored`), and on other platforms
//! TKL now gets these same bits rather than that platform's libm's.
//!
//! [`exp_in_place`] runs eight lanes at a time with AVX-512 when the CPU has it, else
//! element by element with [`expf`] (exact everywhere, since `f64::mul_add` is a true
//! fused multiply-add, in hardware where the CPU has FMA).

/// 32/ln 2 in double precision.
const INV_LN2_N: f64 = f64::from_bits(0x4047_1547_652b_82fe);
/// 1.5·2^52: adding it rounds a double to an integer held in the low mantissa bits.
const SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
/// Polynomial for 2^(r/32): C0·r³ + C1·r² + C2·r + 1.
const C0: f64 = f64::from_bits(0x3ebc_6af8_4b91_2394);
const C1: f64 = f64::from_bits(0x3f2e_bfce_50fa_c4f3);
const C2: f64 = f64::from_bits(0x3f96_2e42_ff0c_52d6);
/// Above this, exp overflows f32 (glibc: `x > 0x1.62e42ep6f`).
const OVERFLOW: f32 = f32::from_bits(0x42b1_7217);
/// Below this, exp rounds to 0 (glibc: `x < -0x1.9fe368p6f`).
const UNDERFLOW: f32 = f32::from_bits(0xc2cf_f1b4);
/// Below this (and not below [`UNDERFLOW`]), glibc returns the smallest subnormal
/// (`x < -0x1.9d1d9ep6f`: its `__math_may_uflowf`, 0x1.4p-75f squared).
const MAY_UNDERFLOW: f32 = f32::from_bits(0xc2ce_8ecf);
/// What glibc returns between [`UNDERFLOW`] and [`MAY_UNDERFLOW`].
const MAY_UNDERFLOW_VALUE: f32 = f32::from_bits(1);

/// `TAB[i]` = the bits of 2^(i/32) rounded to the nearest double, minus i·2^47, so that
/// adding k·2^47 for k ≡ i (mod 32) scales it by 2^⌊k/32⌋ (test `table_holds_two_to_the_i_over_32`).
const TAB: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `exp(x)` with the bits of glibc's `__expf_fma`, one value.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let abstop = (x.to_bits() >> 20) & 0x7ff;
    if abstop > 0x42a {
        // |x| ≥ 88, or x is infinite or NaN.
        if x == f32::NEG_INFINITY {
            return 0.0;
        }
        if abstop >= 0x7f8 {
            return x + x;
        }
        if x > OVERFLOW {
            return f32::INFINITY;
        }
        if x < UNDERFLOW {
            return 0.0;
        }
        if x < MAY_UNDERFLOW {
            return MAY_UNDERFLOW_VALUE;
        }
    }
    let xd = f64::from(x);
    let z = INV_LN2_N.mul_add(xd, SHIFT);
    let ki = z.to_bits();
    let kd = z - SHIFT;
    let r = INV_LN2_N.mul_add(xd, -kd);
    let s = f64::from_bits(TAB[(ki % 32) as usize].wrapping_add(ki << 47));
    let p = r.mul_add(C0, C1);
    let y = r.mul_add(C2, 1.0);
    let y = p.mul_add(r * r, y);
    (y * s) as f32
}

/// Replaces every value by its `exp`, with [`expf`]'s bits: eight lanes at a time with
/// AVX-512, else one at a time with hardware FMA, else with `f64::mul_add`'s software
/// fallback (slow but exact).
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let wide = [x86::exp_in_place_avx512 as WideKernel, x86::exp_in_place_fma];
    #[cfg(not(target_arch = "x86_64"))]
    let wide = [];
    map_in_place(xs, expf, wide);
}

/// A slice kernel compiled for a CPU feature: [`map_in_place`] calls it only where the
/// CPU has the feature.
#[cfg(target_arch = "x86_64")]
pub(super) type WideKernel = unsafe fn(&mut [f32]);

/// Replaces every value `v` by `f(v)`: with `wide[0]` (compiled for AVX-512F) or
/// `wide[1]` (compiled for FMA) where the CPU has the feature, else one at a time.
/// Each wide kernel must give `f`'s bits.
#[cfg(target_arch = "x86_64")]
pub(super) fn map_in_place(xs: &mut [f32], f: fn(f32) -> f32, wide: [WideKernel; 2]) {
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the kernel is compiled for.
        return unsafe { wide[0](xs) };
    }
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: as above.
        return unsafe { wide[1](xs) };
    }
    xs.iter_mut().for_each(|v| *v = f(*v));
}

/// Replaces every value `v` by `f(v)`, one at a time (no wide kernels off x86-64).
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn map_in_place(xs: &mut [f32], f: fn(f32) -> f32, _wide: [fn(&mut [f32]); 0]) {
    xs.iter_mut().for_each(|v| *v = f(*v));
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// [`expf`] compiled with hardware FMA (`mul_add` becomes one instruction).
    #[target_feature(enable = "fma")]
    pub(super) unsafe fn exp_in_place_fma(xs: &mut [f32]) {
        xs.iter_mut().for_each(|v| *v = expf(*v));
    }

    /// Eight lanes at a time in double precision with [`exp8_avx512`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_in_place_avx512(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            exp8_avx512(c.try_into().expect("chunks of eight"));
        }
        exp_in_place_fma(chunks.into_remainder());
    }

    /// [`expf`] of eight values in place, in double precision, the same operations as
    /// [`expf`]. The table lookup is two two-register permutes and a blend: gathers are
    /// slow on CPUs with the gather-data-sampling fix (measured here: slower than libm's
    /// scalar `expf`). Lanes below [`MAY_UNDERFLOW`] take glibc's constants; a group
    /// holding a value above [`OVERFLOW`] or a NaN goes through [`expf`]. Inlined into
    /// callers compiled for AVX-512 (it has no `target_feature` of its own so that it can
    /// be `inline(always)`), so loops that fuse it with other work keep the values in
    /// registers.
    ///
    /// # Safety
    /// Only for callers compiled with AVX-512F enabled, on a CPU that has it.
    #[inline(always)]
    pub(crate) unsafe fn exp8_avx512(c: &mut [f32; 8]) {
        let (inv_ln2_n, shift) = (_mm512_set1_pd(INV_LN2_N), _mm512_set1_pd(SHIFT));
        let (c0, c1, c2, one) = (
            _mm512_set1_pd(C0),
            _mm512_set1_pd(C1),
            _mm512_set1_pd(C2),
            _mm512_set1_pd(1.0),
        );
        let tab: [__m512i; 4] =
            std::array::from_fn(|i| _mm512_loadu_si512(TAB[8 * i..].as_ptr() as *const _));
        let bit4 = _mm512_set1_epi64(16);
        let (overflow, underflow, may_underflow) = (
            _mm512_set1_pd(f64::from(OVERFLOW)),
            _mm512_set1_pd(f64::from(UNDERFLOW)),
            _mm512_set1_pd(f64::from(MAY_UNDERFLOW)),
        );
        let may_underflow_value = _mm512_set1_pd(f64::from(MAY_UNDERFLOW_VALUE));
        let p = c.as_mut_ptr();
        // f32 → f64 is exact, so the comparisons below are those of the f32 values.
        let xd = _mm512_cvtps_pd(_mm256_loadu_ps(p));
        // Not (x ≤ OVERFLOW): overflow or NaN — rare, so the whole group goes scalar.
        if _mm512_cmp_pd_mask::<_CMP_NLE_UQ>(xd, overflow) != 0 {
            c.iter_mut().for_each(|v| *v = expf(*v));
            return;
        }
        let z = _mm512_fmadd_pd(inv_ln2_n, xd, shift);
        let ki = _mm512_castpd_si512(z);
        let kd = _mm512_sub_pd(z, shift);
        let r = _mm512_fmsub_pd(inv_ln2_n, xd, kd);
        // TAB[ki mod 32]: the permutes use the low 4 index bits, bit 4 picks the half.
        let low = _mm512_permutex2var_epi64(tab[0], ki, tab[1]);
        let high = _mm512_permutex2var_epi64(tab[2], ki, tab[3]);
        let t = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(ki, bit4), low, high);
        let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
        let poly = _mm512_fmadd_pd(r, c0, c1);
        let y = _mm512_fmadd_pd(r, c2, one);
        let y = _mm512_fmadd_pd(poly, _mm512_mul_pd(r, r), y);
        let mut y = _mm512_mul_pd(y, s);
        y = _mm512_mask_blend_pd(
            _mm512_cmp_pd_mask::<_CMP_LT_OQ>(xd, may_underflow),
            y,
            may_underflow_value,
        );
        y = _mm512_mask_blend_pd(
            _mm512_cmp_pd_mask::<_CMP_LT_OQ>(xd, underflow),
            y,
            _mm512_setzero_pd(),
        );
        _mm256_storeu_ps(p, _mm512_cvtpd_ps(y));
    }
}

/// What the tests of [`expf`] and [`super::logf`] share: the bits of a slice kernel, its
/// one-value function and the system's libm compared pattern by pattern.
#[cfg(test)]
pub(super) mod testutil {
    /// Whether this is glibc on x86-64 with FMA, where `f32::exp` and (before glibc 2.41)
    /// `f32::ln` are the algorithms `expf` and `logf` reproduce.
    pub fn system_is_glibc_fma() -> bool {
        cfg!(all(
            target_arch = "x86_64",
            target_os = "linux",
            target_env = "gnu"
        )) && {
            #[cfg(target_arch = "x86_64")]
            {
                std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        }
    }

    /// Checks the bit patterns `from, from + step, …` (wrapping) for `count` values:
    /// `in_place` gives `one`'s bits, and `one` gives `system`'s, when given (NaNs
    /// compare by their bits too).
    pub fn check_patterns(
        from: u32,
        step: u32,
        count: usize,
        in_place: fn(&mut [f32]),
        one: fn(f32) -> f32,
        system: Option<fn(f32) -> f32>,
    ) {
        let mut xs: Vec<f32> = (0..count)
            .map(|i| f32::from_bits(from.wrapping_add(step.wrapping_mul(i as u32))))
            .collect();
        let inputs = xs.clone();
        in_place(&mut xs);
        for (&x, &got) in inputs.iter().zip(&xs) {
            let want = one(x);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "in place at {x:e}: {got:e} vs {want:e}"
            );
            if let Some(system) = system {
                let sys = system(x);
                assert_eq!(want.to_bits(), sys.to_bits(), "at {x:e}: {want:e}, libm {sys:e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the bit patterns `from, from + step, …` (wrapping) for `count` values.
    fn check_patterns(from: u32, step: u32, count: usize) {
        let system = testutil::system_is_glibc_fma().then_some(f32::exp as fn(f32) -> f32);
        testutil::check_patterns(from, step, count, exp_in_place, expf, system);
    }

    #[test]
    fn agrees_with_libm_across_the_floats_and_densely_near_the_thresholds() {
        // Every 251st bit pattern: all signs, exponents, subnormals, infinities, NaNs.
        check_patterns(0, 251, (u32::MAX / 251) as usize + 1);
        // Every pattern around each threshold, and through the range TKL uses most.
        for edge in [
            OVERFLOW,
            UNDERFLOW,
            MAY_UNDERFLOW,
            88.0,
            -88.0,
            0.0,
            -0.0,
            1e-8,
            -1e-8,
        ] {
            check_patterns(edge.to_bits().wrapping_sub(5000), 1, 10_000);
        }
        check_patterns((-30.0f32).to_bits(), 7, 1_000_000);
    }

    #[test]
    fn special_values() {
        let mut v = [
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            0.0,
            -0.0,
            -200.0,
            100.0,
        ];
        exp_in_place(&mut v);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[1], f32::INFINITY);
        assert!(v[2].is_nan());
        assert_eq!((v[3], v[4], v[5], v[6]), (1.0, 1.0, 0.0, f32::INFINITY));
        assert_eq!(
            expf(-103.5).to_bits(),
            1,
            "glibc's smallest subnormal just above its underflow bound"
        );
    }

    #[test]
    fn table_holds_two_to_the_i_over_32() {
        for (i, &t) in TAB.iter().enumerate() {
            let v = f64::from_bits(t.wrapping_add((i as u64) << 47));
            let want = (i as f64 / 32.0).exp2();
            assert!(
                (v - want).abs() <= want * f64::EPSILON,
                "TAB[{i}]: {v} vs 2^({i}/32) = {want}"
            );
        }
    }

    /// All 2^32 patterns (about a minute on two cores): `cargo test --release -- --ignored exhaustive`.
    #[test]
    #[ignore]
    fn exhaustive_against_libm() {
        use rayon::prelude::*;
        (0u32..=255).into_par_iter().for_each(|hi| {
            check_patterns(hi << 24, 1, 1 << 24);
        });
    }
}

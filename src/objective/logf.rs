//! `ln` of f32 slices with the bits of glibc's `logf` on FMA hardware, vectorized.
//!
//! The KL step of TKL takes two logarithms per class and row, in training and in every
//! evaluation of the metric; through the standard library each is a call into libm
//! (about 3 % of a tiny prompt round's CPU). The loss must keep its bits, so this module
//! computes glibc's algorithm (glibc 2.28 to 2.40 take it from ARM's optimized-routines):
//! with `x = 2^k · z`, `z` in `[0x1.6p-1, 0x1.6p+0)` and `c` the centre of one of 16
//! subintervals of it, `ln x = k·ln 2 + ln c + ln(z/c)`, the last by a quartic in
//! `r = z·(1/c) − 1`, all in double precision and rounded once to f32, with the fused
//! multiply-adds of glibc's `__logf_fma` variant. So on glibc x86-64 machines with FMA,
//! where the golden metrics were recorded, every result is the bit pattern `f32::ln`
//! returns there (tests compare them, exhaustively with `--ignored`), and elsewhere the
//! loss gets these same bits rather than that platform's libm's. glibc 2.41 replaced
//! its `logf` by a correctly rounded one, which can differ in the last bit: there the
//! comparison with the system's `ln` is skipped, as on other platforms.
//!
//! [`ln_in_place`] runs eight lanes at a time with AVX-512 when the CPU has it, else
//! element by element with [`logf`].

use super::expf::map_in_place;
#[cfg(target_arch = "x86_64")]
use super::expf::WideKernel;

/// `1/c` for the 16 subintervals (glibc's `__logf_data.tab`, first column).
const INVC: [f64; 16] = [
    f64::from_bits(0x3ff661ec79f8f3be),
    f64::from_bits(0x3ff571ed4aaf883d),
    f64::from_bits(0x3ff49539f0f010b0),
    f64::from_bits(0x3ff3c995b0b80385),
    f64::from_bits(0x3ff30d190c8864a5),
    f64::from_bits(0x3ff25e227b0b8ea0),
    f64::from_bits(0x3ff1bb4a4a1a343f),
    f64::from_bits(0x3ff12358f08ae5ba),
    f64::from_bits(0x3ff0953f419900a7),
    1.0,
    f64::from_bits(0x3fee608cfd9a47ac),
    f64::from_bits(0x3feca4b31f026aa0),
    f64::from_bits(0x3feb2036576afce6),
    f64::from_bits(0x3fe9c2d163a1aa2d),
    f64::from_bits(0x3fe886e6037841ed),
    f64::from_bits(0x3fe767dcf5534862),
];
/// `ln c` for the 16 subintervals (glibc's `__logf_data.tab`, second column).
const LOGC: [f64; 16] = [
    f64::from_bits(0xbfd57bf7808caade),
    f64::from_bits(0xbfd2bef0a7c06ddb),
    f64::from_bits(0xbfd01eae7f513a67),
    f64::from_bits(0xbfcb31d8a68224e9),
    f64::from_bits(0xbfc6574f0ac07758),
    f64::from_bits(0xbfc1aa2bc79c8100),
    f64::from_bits(0xbfba4e76ce8c0e5e),
    f64::from_bits(0xbfb1973c5a611ccc),
    f64::from_bits(0xbfa252f438e10c1e),
    0.0,
    f64::from_bits(0x3faaa5aa5df25984),
    f64::from_bits(0x3fbc5e53aa362eb4),
    f64::from_bits(0x3fc526e57720db08),
    f64::from_bits(0x3fcbc2860d224770),
    f64::from_bits(0x3fd1058bc8a07ee1),
    f64::from_bits(0x3fd4043057b6ee09),
];
/// ln 2 in double precision.
const LN2: f64 = f64::from_bits(0x3fe62e42fefa39ef);
/// `ln(1 + r) ≈ r + A2·r² + A1·r³ + A0·r⁴` (glibc's `poly`; the linear coefficient is 1).
const A0: f64 = f64::from_bits(0xbfd00ea348b88334);
const A1: f64 = f64::from_bits(0x3fd5575b0be00b6a);
const A2: f64 = f64::from_bits(0xbfdffffef20a4123);
/// The bits of 0x1.6p-1 rounded down to its subinterval: `ix − OFF` puts the exponent
/// in the top bits and the subinterval in the next four.
const OFF: u32 = 0x3f33_0000;

/// `ln(x)` with the bits of glibc's `__logf_fma`, one value.
#[inline(always)]
pub fn logf(x: f32) -> f32 {
    let mut ix = x.to_bits();
    if ix == 0x3f80_0000 {
        return 0.0;
    }
    if ix.wrapping_sub(0x0080_0000) >= 0x7f80_0000 - 0x0080_0000 {
        // Zero, subnormal, negative, infinite or NaN.
        if ix.wrapping_mul(2) == 0 {
            return f32::NEG_INFINITY;
        }
        if ix == 0x7f80_0000 {
            return x;
        }
        if (ix & 0x8000_0000) != 0 || ix.wrapping_mul(2) >= 0xff00_0000 {
            return invalid(x);
        }
        // A subnormal: scale it into the normal range.
        ix = (x * f32::from_bits(0x4b00_0000)).to_bits().wrapping_sub(23 << 23);
    }
    let tmp = ix.wrapping_sub(OFF);
    let i = ((tmp >> 19) % 16) as usize;
    let k = (tmp as i32) >> 23;
    let iz = ix.wrapping_sub(tmp & 0xff80_0000);
    let (invc, logc) = (INVC[i], LOGC[i]);
    let z = f64::from(f32::from_bits(iz));
    let r = z.mul_add(invc, -1.0);
    let y0 = f64::from(k).mul_add(LN2, logc);
    let r2 = r * r;
    let y = A1.mul_add(r, A2);
    let y = A0.mul_add(r2, y);
    let y = y.mul_add(r2, y0 + r);
    y as f32
}

/// glibc's result for a negative number or a NaN: `(x − x) / (x − x)`, the platform's
/// invalid-operation NaN (a NaN argument's own payload), with the invalid flag raised.
#[allow(clippy::eq_op)]
#[inline(never)]
fn invalid(x: f32) -> f32 {
    (x - x) / (x - x)
}

/// Replaces every value by its `ln`, with [`logf`]'s bits: eight lanes at a time with
/// AVX-512, else one at a time with hardware FMA, else with `f64::mul_add`'s software
/// fallback (slow but exact).
pub fn ln_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let wide = [x86::ln_in_place_avx512 as WideKernel, x86::ln_in_place_fma];
    #[cfg(not(target_arch = "x86_64"))]
    let wide = [];
    map_in_place(xs, logf, wide);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// [`logf`] compiled with hardware FMA (`mul_add` becomes one instruction).
    #[target_feature(enable = "fma")]
    pub(super) unsafe fn ln_in_place_fma(xs: &mut [f32]) {
        xs.iter_mut().for_each(|v| *v = logf(*v));
    }

    /// Eight lanes at a time in double precision, the same operations as [`logf`]; a
    /// group holding anything but a positive normal number goes through [`logf`]. The
    /// table lookups are two-register permutes (gathers are slow on CPUs with the
    /// gather-data-sampling fix).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn ln_in_place_avx512(xs: &mut [f32]) {
        let halves = |t: &[f64; 16]| [_mm512_loadu_pd(t.as_ptr()), _mm512_loadu_pd(t[8..].as_ptr())];
        let (invc, logc) = (halves(&INVC), halves(&LOGC));
        let (ln2, a0, a1, a2) = (
            _mm512_set1_pd(LN2),
            _mm512_set1_pd(A0),
            _mm512_set1_pd(A1),
            _mm512_set1_pd(A2),
        );
        let (one, off, top) = (
            _mm512_set1_pd(1.0),
            _mm256_set1_epi32(OFF as i32),
            _mm256_set1_epi32(0xff80_0000_u32 as i32),
        );
        let (min_normal, limit) = (
            _mm256_set1_epi32(0x0080_0000),
            _mm256_set1_epi32(0x7f80_0000 - 0x0080_0000),
        );
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            let p = c.as_mut_ptr();
            let ix = _mm256_loadu_si256(p as *const __m256i);
            // Unsigned ix − 0x00800000 ≥ 0x7f000000: not a positive normal number.
            let shifted = _mm256_sub_epi32(ix, min_normal);
            let special = _mm256_cmpeq_epi32(_mm256_max_epu32(shifted, limit), shifted);
            if _mm256_movemask_epi8(special) != 0 {
                c.iter_mut().for_each(|v| *v = logf(*v));
                continue;
            }
            let tmp = _mm256_sub_epi32(ix, off);
            let i = _mm512_cvtepu32_epi64(_mm256_srli_epi32::<19>(tmp));
            let k = _mm512_cvtepi32_pd(_mm256_srai_epi32::<23>(tmp));
            let iz = _mm256_sub_epi32(ix, _mm256_and_si256(tmp, top));
            let z = _mm512_cvtps_pd(_mm256_castsi256_ps(iz));
            // The permutes read the low 4 bits of i: the subinterval.
            let inv = _mm512_permutex2var_pd(invc[0], i, invc[1]);
            let lc = _mm512_permutex2var_pd(logc[0], i, logc[1]);
            let r = _mm512_fmsub_pd(z, inv, one);
            let y0 = _mm512_fmadd_pd(k, ln2, lc);
            let r2 = _mm512_mul_pd(r, r);
            let y = _mm512_fmadd_pd(a1, r, a2);
            let y = _mm512_fmadd_pd(a0, r2, y);
            let y = _mm512_fmadd_pd(y, r2, _mm512_add_pd(y0, r));
            let mut out = _mm512_cvtpd_ps(y);
            // ln 1 = +0 exactly (the polynomial gives +0 too, but glibc returns early).
            let ones = _mm256_cmpeq_epi32(ix, _mm256_set1_epi32(0x3f80_0000));
            out = _mm256_andnot_ps(_mm256_castsi256_ps(ones), out);
            _mm256_storeu_ps(p, out);
        }
        ln_in_place_fma(chunks.into_remainder());
    }
}

#[cfg(test)]
mod tests {
    use super::super::expf::testutil;
    use super::*;

    /// Whether the C library reports a glibc version below 2.41 (whose `logf` is this
    /// algorithm's; 2.41 made it correctly rounded).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_before_2_41() -> bool {
        extern "C" {
            fn gnu_get_libc_version() -> *const std::ffi::c_char;
        }
        // SAFETY: glibc returns a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) };
        let mut parts = v
            .to_str()
            .unwrap_or("")
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) < (2, 41)
    }

    /// Off glibc there is no libm `logf` of this algorithm to compare with.
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn glibc_before_2_41() -> bool {
        false
    }

    /// Checks the bit patterns `from, from + step, …` (wrapping) for `count` values
    /// against `logf` and, where the system's `f32::ln` is this algorithm (glibc before
    /// 2.41 on an FMA machine), against libm; elsewhere `logf` within an ulp of `f64::ln`.
    fn check_patterns(from: u32, step: u32, count: usize) {
        let glibc = testutil::system_is_glibc_fma() && glibc_before_2_41();
        let system = glibc.then_some(f32::ln as fn(f32) -> f32);
        testutil::check_patterns(from, step, count, ln_in_place, logf, system);
        if !glibc {
            for i in 0..count {
                let x = f32::from_bits(from.wrapping_add(step.wrapping_mul(i as u32)));
                if x.is_finite() && x > 0.0 {
                    let exact = f64::from(x).ln();
                    let err = (f64::from(logf(x)) - exact).abs();
                    assert!(
                        err <= f64::from(f32::EPSILON) * exact.abs().max(1e-38),
                        "logf({x:e})"
                    );
                }
            }
        }
    }

    #[test]
    fn agrees_with_libm_across_the_floats_and_densely_where_tkl_uses_it() {
        // Every 251st bit pattern: all signs, exponents, subnormals, infinities, NaNs.
        check_patterns(0, 251, (u32::MAX / 251) as usize + 1);
        // Every pattern around 1 (the table's centre subinterval and both neighbours),
        // and through the probabilities TKL takes logarithms of (1e-12 … 1).
        check_patterns(0x3f70_0000, 1, 1 << 20);
        check_patterns(0x2b8c_bccc, 97, 1 << 20);
    }

    #[test]
    fn special_values() {
        let mut v = [
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::MIN_POSITIVE,
            1e-45,
        ];
        let want: Vec<f32> = v.iter().map(|&x| logf(x)).collect();
        assert_eq!(want[1], f32::INFINITY);
        assert!(want[0].is_nan() && want[2].is_nan() && want[6].is_nan());
        assert_eq!((want[3], want[4]), (f32::NEG_INFINITY, f32::NEG_INFINITY));
        assert_eq!(want[5].to_bits(), 0);
        assert!((f64::from(want[8]) - f64::from(1e-45f32).ln()).abs() < 1e-5);
        ln_in_place(&mut v);
        for (got, want) in v.iter().zip(&want) {
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
        }
    }

    #[test]
    fn table_holds_inverses_and_their_logarithms() {
        for (i, (&invc, &logc)) in INVC.iter().zip(&LOGC).enumerate() {
            assert!((logc + invc.ln()).abs() < 1e-15, "entry {i}");
        }
    }

    #[test]
    #[ignore]
    fn exhaustive_against_libm() {
        use rayon::prelude::*;
        (0u32..=255).into_par_iter().for_each(|hi| {
            check_patterns(hi << 24, 1, 1 << 24);
        });
    }
}

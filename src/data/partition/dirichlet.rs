//! Per-class Dirichlet splits of the training set, their capped variant, and `iid`.
//!
//! * [`split`] (reference `generate_federated_dataset_imagenet`): for each class, shuffle
//!   its long-tailed training samples, draw p ~ Dir(α · 1_K), cut at ⌊cumsum(p) · n_c⌋;
//!   no minimum client size; each client's list is shuffled at the end.
//! * [`capped`] (reference `noniid-labeldir`, fine-grained datasets): the same per class,
//!   but clients already holding ≥ N_train / K samples get weight 0, and the class's test
//!   samples are cut at the same proportions; the whole split is redrawn until every
//!   client has at least one train and one test sample.
//! * [`iid`]: one shuffle, equal consecutive shares (the first N mod K clients get one more).

use anyhow::{bail, Result};

use super::{check_params, cut_points, split_at_cuts, ClientSplit};
use crate::rng::{self, StreamRng};

/// Redraws allowed before [`capped`] gives up.
pub const MAX_CAPPED_ATTEMPTS: usize = 1000;

fn by_class(indices: &[usize], labels: &[u32], num_classes: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); num_classes];
    for &i in indices {
        out[labels[i] as usize].push(i);
    }
    out
}

/// Per-class Dir(α) split of `indices` (into a split labelled by `labels`) over `clients`.
pub fn split(
    indices: &[usize],
    labels: &[u32],
    num_classes: usize,
    clients: usize,
    alpha: f64,
    rng: &mut StreamRng,
) -> Result<Vec<Vec<usize>>> {
    check_params(clients, alpha, indices.len())?;
    let mut out = vec![Vec::new(); clients];
    for mut idx in by_class(indices, labels, num_classes) {
        rng::shuffle(rng, &mut idx);
        let p = rng::dirichlet(rng, alpha, clients);
        for (k, part) in split_at_cuts(&idx, &cut_points(&p, idx.len()))
            .into_iter()
            .enumerate()
        {
            out[k].extend(part);
        }
    }
    for client in &mut out {
        rng::shuffle(rng, client);
    }
    Ok(out)
}

/// Uniform split: shuffle, then equal consecutive shares.
pub fn iid(indices: &[usize], clients: usize, rng: &mut StreamRng) -> Result<Vec<Vec<usize>>> {
    check_params(clients, 1.0, indices.len())?;
    let mut idx = indices.to_vec();
    rng::shuffle(rng, &mut idx);
    Ok(deal(&idx, clients))
}

/// Consecutive shares of `items`, sizes differing by at most one (larger first).
pub(crate) fn deal(items: &[usize], clients: usize) -> Vec<Vec<usize>> {
    let (q, r) = (items.len() / clients, items.len() % clients);
    let mut out = Vec::with_capacity(clients);
    let mut start = 0;
    for k in 0..clients {
        let len = q + usize::from(k < r);
        out.push(items[start..start + len].to_vec());
        start += len;
    }
    out
}

/// Capped per-class Dirichlet of train and test at the same proportions (see the module
/// documentation).
pub fn capped(
    lt_train: &[usize],
    train_labels: &[u32],
    test_labels: &[u32],
    num_classes: usize,
    clients: usize,
    alpha: f64,
    rng: &mut StreamRng,
) -> Result<Vec<ClientSplit>> {
    check_params(clients, alpha, lt_train.len())?;
    if clients > test_labels.len() {
        bail!(
            "--clients {clients} is more than the {} test samples (every client needs one)",
            test_labels.len()
        );
    }
    let all_test: Vec<usize> = (0..test_labels.len()).collect();
    let train_by_class = by_class(lt_train, train_labels, num_classes);
    let test_by_class = by_class(&all_test, test_labels, num_classes);
    let cap = lt_train.len() as f64 / clients as f64;
    for _ in 0..MAX_CAPPED_ATTEMPTS {
        let mut out = vec![
            ClientSplit {
                train: Vec::new(),
                test: Vec::new(),
            };
            clients
        ];
        for (tr, te) in train_by_class.iter().zip(&test_by_class) {
            let (mut tr, mut te) = (tr.clone(), te.clone());
            rng::shuffle(rng, &mut tr);
            rng::shuffle(rng, &mut te);
            let mut p = rng::dirichlet(rng, alpha, clients);
            for (pk, cl) in p.iter_mut().zip(&out) {
                if cl.train.len() as f64 >= cap {
                    *pk = 0.0;
                }
            }
            let sum: f64 = p.iter().sum();
            if sum > 0.0 {
                p.iter_mut().for_each(|x| *x /= sum);
            } else {
                p = vec![1.0 / clients as f64; clients];
            }
            let parts_tr = split_at_cuts(&tr, &cut_points(&p, tr.len()));
            let parts_te = split_at_cuts(&te, &cut_points(&p, te.len()));
            for ((cl, a), b) in out.iter_mut().zip(parts_tr).zip(parts_te) {
                cl.train.extend(a);
                cl.test.extend(b);
            }
        }
        if out.iter().all(|c| !c.train.is_empty() && !c.test.is_empty()) {
            return Ok(out);
        }
    }
    bail!(
        "--split capped: no split with at least one train and one test sample per client in \
         {MAX_CAPPED_ATTEMPTS} draws; use fewer --clients or a larger --alpha"
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::cifar_like;
    use super::*;
    use crate::data::longtail::LongTail;

    fn lt(seed: u64) -> (crate::data::Dataset, LongTail) {
        let ds = cifar_like(500, 100);
        let lt = LongTail::subsample(&ds.train, 100, 100.0, &mut rng::stream(seed, "longtail")).unwrap();
        (ds, lt)
    }

    #[test]
    fn dirichlet_covers_every_training_index_exactly_once() {
        let (ds, lt) = lt(1);
        for alpha in [0.1, 1.0, 10.0] {
            let parts = split(
                &lt.indices,
                &ds.train.labels,
                100,
                20,
                alpha,
                &mut rng::stream(1, "split"),
            )
            .unwrap();
            let mut all: Vec<usize> = parts.concat();
            all.sort();
            let mut want = lt.indices.clone();
            want.sort();
            assert_eq!(all, want, "α {alpha}");
        }
        let a = split(
            &lt.indices,
            &ds.train.labels,
            100,
            20,
            1.0,
            &mut rng::stream(1, "split"),
        )
        .unwrap();
        let b = split(
            &lt.indices,
            &ds.train.labels,
            100,
            20,
            1.0,
            &mut rng::stream(1, "split"),
        )
        .unwrap();
        let c = split(
            &lt.indices,
            &ds.train.labels,
            100,
            20,
            1.0,
            &mut rng::stream(2, "split"),
        )
        .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn iid_deals_equal_shares() {
        let idx: Vec<usize> = (0..103).collect();
        let parts = iid(&idx, 10, &mut rng::stream(0, "split")).unwrap();
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![11, 11, 11, 10, 10, 10, 10, 10, 10, 10]);
        let mut all = parts.concat();
        all.sort();
        assert_eq!(all, idx);
    }

    #[test]
    fn capped_gives_every_client_train_and_test() {
        let (ds, lt) = lt(2);
        let parts = capped(
            &lt.indices,
            &ds.train.labels,
            &ds.test.labels,
            100,
            20,
            0.5,
            &mut rng::stream(2, "split"),
        )
        .unwrap();
        assert!(parts.iter().all(|c| !c.train.is_empty() && !c.test.is_empty()));
        let mut all: Vec<usize> = parts.iter().flat_map(|c| c.train.clone()).collect();
        all.sort();
        let mut want = lt.indices.clone();
        want.sort();
        assert_eq!(all, want);
        let n_test: usize = parts.iter().map(|c| c.test.len()).sum();
        assert_eq!(n_test, ds.test.len());
        // The cap keeps clients from growing far past N/K (one class can overshoot).
        let cap = lt.len() / 20;
        assert!(
            parts.iter().all(|c| c.train.len() < cap + 500),
            "{:?}",
            parts.iter().map(|c| c.train.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn too_many_clients_is_an_error() {
        let idx: Vec<usize> = (0..5).collect();
        let labels = vec![0u32; 5];
        let err = split(&idx, &labels, 1, 6, 1.0, &mut rng::stream(0, "split")).unwrap_err();
        assert!(err.to_string().contains("--clients 6"), "{err}");
    }
}

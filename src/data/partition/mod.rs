//! Client splits: which long-tailed training samples and which test samples each client
//! holds, as a [`Partition`] that is written to (and read from) `partition.json`.
//!
//! Schemes ([`Scheme`]):
//! * [`labeldir100`] — the reference's hierarchical CIFAR-100 split over the pooled
//!   LT-train + test set (each client's test set follows its own label distribution);
//! * [`dirichlet`] — per-class Dir(α) over clients for training (ImageNet-LT, Places-LT),
//!   and its capped variant for the fine-grained sets (`capped`), plus `iid`;
//! * [`test_sets`] — per-client test sets for the train-only schemes ([`ClientTest`]);
//! * [`import`] — a split exported from the reference (`--split-file`), for exact parity.
//!
//! Every index is into the dataset's *original* train or test split, so a partition can be
//! checked against the files by any tool. Randomness comes from the run's `"split"`
//! stream: same seed and settings → the same partition, bit for bit.

pub mod dirichlet;
pub mod import;
pub mod labeldir100;
pub mod test_sets;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use super::longtail::{ClassGroups, Group, LongTail};
use crate::rng;

/// How training samples are spread over clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// Hierarchical superclass Dir(α) / fine-class Dir(10) draw from the pooled LT-train +
    /// test set (CIFAR-100, the reference's `noniid-labeldir100_LT`).
    #[value(name = "labeldir100")]
    #[serde(rename = "labeldir100")]
    LabelDir100,
    /// Per-class Dir(α) proportions over clients (ImageNet-LT, Places-LT in the reference).
    Dirichlet,
    /// Uniformly shuffled, equal shares.
    Iid,
    /// Per-class Dir(α) with full clients (≥ N/K samples) skipped, train and test cut at
    /// the same proportions, redrawn until every client has a train and a test sample (the
    /// reference's fine-grained `noniid-labeldir`).
    Capped,
}

/// How per-client test sets are built for `dirichlet` and `iid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTest {
    /// Each client gets an equal, class-balanced share of the global test set (ImageNet-LT
    /// in the reference).
    Balanced,
    /// Each client's test set follows its training label distribution (drawn from the
    /// global test set; clients' test sets may overlap).
    FollowTrain,
    /// An independent per-class Dir(α) split of the test set (Places-LT in the reference).
    Independent,
}

/// The knobs of a split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitConfig {
    /// The scheme.
    pub scheme: Scheme,
    /// Per-client test sets (only for `dirichlet` and `iid`; the other schemes build their
    /// own).
    pub client_test: ClientTest,
    /// Number of clients K.
    pub clients: usize,
    /// Dirichlet concentration α (β in the reference).
    pub alpha: f64,
    /// Run seed; the split uses its `"split"` stream.
    pub seed: u64,
}

/// One client's samples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSplit {
    /// Indices into the dataset's original training split.
    pub train: Vec<usize>,
    /// Indices into the dataset's test split.
    pub test: Vec<usize>,
}

/// How a partition was made, for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PartitionMeta {
    /// Dataset name.
    pub dataset: String,
    /// Scheme name, or `"imported"`.
    pub scheme: String,
    /// Per-client test construction, when the scheme uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_test: Option<String>,
    /// Run seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Imbalance factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imb_factor: Option<f64>,
    /// Dirichlet α.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Split file it was imported from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A federated split of a long-tailed dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partition {
    /// How it was made.
    pub meta: PartitionMeta,
    /// Long-tailed training count per class (the basis of the groups).
    pub class_counts: Vec<usize>,
    /// Many / Medium / Few classes.
    pub groups: ClassGroups,
    /// The long-tailed training subset: indices into the original training split.
    pub lt_train: Vec<usize>,
    /// Per client, its train and test indices.
    pub clients: Vec<ClientSplit>,
}

impl Partition {
    /// A 64-bit FNV-1a fingerprint (hex) of the dataset name, the long-tailed class counts, the training
    /// subset and every client's train and test indices: equal fingerprints mean the same
    /// data seen by the same clients.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        let list = |v: &[usize], eat: &mut dyn FnMut(u64)| {
            eat(v.len() as u64);
            v.iter().for_each(|&i| eat(i as u64));
        };
        self.meta.dataset.bytes().for_each(|b| eat(u64::from(b)));
        list(&self.class_counts, &mut eat);
        list(&self.lt_train, &mut eat);
        for c in &self.clients {
            list(&c.train, &mut eat);
            list(&c.test, &mut eat);
        }
        format!("{h:016x}")
    }
}

/// Checks the parameters every scheme shares.
pub fn check_params(clients: usize, alpha: f64, n_samples: usize) -> Result<()> {
    if clients == 0 {
        bail!("--clients must be at least 1");
    }
    if !(alpha > 0.0 && alpha.is_finite()) {
        bail!("--alpha must be a finite number > 0, got {alpha}");
    }
    if clients > n_samples {
        bail!("--clients {clients} is more than the {n_samples} samples to split");
    }
    Ok(())
}

impl Partition {
    /// Splits the long-tailed training subset `lt` of `ds` (and its test set) over clients.
    pub fn build(ds: &Dataset, lt: &LongTail, cfg: &SplitConfig, meta: PartitionMeta) -> Result<Self> {
        let c = ds.num_classes();
        let mut rng = rng::stream(cfg.seed, "split");
        let uses_client_test = matches!(cfg.scheme, Scheme::Dirichlet | Scheme::Iid);
        let clients = match cfg.scheme {
            Scheme::LabelDir100 => {
                let f2c = ds
                    .fine_to_coarse()
                    .context("--split labeldir100 needs superclass labels (CIFAR-100)")?;
                let n_coarse = ds.coarse_classes.as_ref().map_or(0, |v| v.len());
                labeldir100::split(
                    &lt.indices,
                    &ds.train.labels,
                    &ds.test.labels,
                    &f2c,
                    n_coarse,
                    cfg.clients,
                    cfg.alpha,
                    &mut rng,
                )?
            }
            Scheme::Capped => dirichlet::capped(
                &lt.indices,
                &ds.train.labels,
                &ds.test.labels,
                c,
                cfg.clients,
                cfg.alpha,
                &mut rng,
            )?,
            Scheme::Dirichlet | Scheme::Iid => {
                let train = if cfg.scheme == Scheme::Dirichlet {
                    dirichlet::split(&lt.indices, &ds.train.labels, c, cfg.clients, cfg.alpha, &mut rng)?
                } else {
                    dirichlet::iid(&lt.indices, cfg.clients, &mut rng)?
                };
                let test = test_sets::build(
                    cfg.client_test,
                    &train,
                    &ds.train.labels,
                    &ds.test.labels,
                    c,
                    cfg.alpha,
                    &mut rng,
                )?;
                train
                    .into_iter()
                    .zip(test)
                    .map(|(train, test)| ClientSplit { train, test })
                    .collect()
            }
        };
        let meta = PartitionMeta {
            client_test: uses_client_test.then(|| format!("{:?}", cfg.client_test).to_lowercase()),
            seed: Some(cfg.seed),
            alpha: Some(cfg.alpha),
            ..meta
        };
        Ok(Partition {
            meta,
            class_counts: lt.class_counts.clone(),
            groups: ClassGroups::from_counts(&lt.class_counts),
            lt_train: lt.indices.clone(),
            clients,
        })
    }

    /// Checks the partition against `ds`: indices in range, training indices inside the
    /// long-tailed subset and used at most once, test indices unique within a client, and
    /// `class_counts` equal to the labels of `lt_train`.
    pub fn check(&self, ds: &Dataset) -> Result<()> {
        let (n_train, n_test) = (ds.train.len(), ds.test.len());
        let mut in_lt = vec![false; n_train];
        for &i in &self.lt_train {
            if i >= n_train {
                bail!("lt_train holds index {i}, but the train split has {n_train} samples");
            }
            if in_lt[i] {
                bail!("lt_train lists train sample {i} twice");
            }
            in_lt[i] = true;
        }
        let counts = {
            let mut v = vec![0usize; ds.num_classes()];
            for &i in &self.lt_train {
                v[ds.train.labels[i] as usize] += 1;
            }
            v
        };
        if counts != self.class_counts {
            let c = (0..counts.len().max(self.class_counts.len()))
                .find(|&c| counts.get(c) != self.class_counts.get(c))
                .unwrap_or(0);
            bail!(
                "class_counts says class {c} has {:?} long-tailed training images, the \
                 dataset's labels give {:?} (is this split from the same dataset?)",
                self.class_counts.get(c),
                counts.get(c)
            );
        }
        let mut used = vec![false; n_train];
        for (k, cl) in self.clients.iter().enumerate() {
            for &i in &cl.train {
                if i >= n_train || !in_lt[i] {
                    bail!("client {k}: train index {i} is not in the long-tailed training set");
                }
                if used[i] {
                    bail!("client {k}: train sample {i} is also held by another client (or twice)");
                }
                used[i] = true;
            }
            let mut seen = std::collections::HashSet::new();
            for &i in &cl.test {
                if i >= n_test {
                    bail!("client {k}: test index {i}, but the test split has {n_test} samples");
                }
                if !seen.insert(i) {
                    bail!("client {k}: test sample {i} listed twice");
                }
            }
        }
        Ok(())
    }

    /// Per-client, per-class counts of training samples (`[client][class]`).
    pub fn train_class_matrix(&self, train_labels: &[u32], num_classes: usize) -> Vec<Vec<usize>> {
        self.clients
            .iter()
            .map(|cl| {
                let mut row = vec![0; num_classes];
                for &i in &cl.train {
                    row[train_labels[i] as usize] += 1;
                }
                row
            })
            .collect()
    }

    /// One summary row per client.
    pub fn client_stats(
        &self,
        train_labels: &[u32],
        test_labels: &[u32],
        num_classes: usize,
    ) -> Vec<ClientStats> {
        let matrix = self.train_class_matrix(train_labels, num_classes);
        self.clients
            .iter()
            .zip(matrix)
            .map(|(cl, row)| {
                let mut by_group = [0usize; 3];
                for (c, &n) in row.iter().enumerate() {
                    let g = match Group::of_count(self.class_counts[c]) {
                        Group::Many => 0,
                        Group::Medium => 1,
                        Group::Few => 2,
                    };
                    by_group[g] += n;
                }
                let mut test_classes = vec![false; num_classes];
                for &i in &cl.test {
                    test_classes[test_labels[i] as usize] = true;
                }
                ClientStats {
                    train: cl.train.len(),
                    test: cl.test.len(),
                    train_classes: row.iter().filter(|&&n| n > 0).count(),
                    test_classes: test_classes.iter().filter(|&&b| b).count(),
                    many: by_group[0],
                    medium: by_group[1],
                    few: by_group[2],
                }
            })
            .collect()
    }

    /// Serializes to pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

/// One client's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientStats {
    /// Training samples.
    pub train: usize,
    /// Test samples.
    pub test: usize,
    /// Classes with at least one training sample.
    pub train_classes: usize,
    /// Classes with at least one test sample.
    pub test_classes: usize,
    /// Training samples from Many classes.
    pub many: usize,
    /// Training samples from Medium classes.
    pub medium: usize,
    /// Training samples from Few classes.
    pub few: usize,
}

/// Cut points ⌊cumsum(p)_k · n⌋ for k < K−1 (the reference's
/// `(np.cumsum(p) * n).astype(int)[:-1]`), clamped to be monotone and ≤ n.
pub(crate) fn cut_points(p: &[f64], n: usize) -> Vec<usize> {
    let mut acc = 0.0;
    let mut prev = 0;
    let mut cuts = Vec::with_capacity(p.len().saturating_sub(1));
    for &x in &p[..p.len().saturating_sub(1)] {
        acc += x;
        let cut = ((acc * n as f64) as usize).clamp(prev, n);
        cuts.push(cut);
        prev = cut;
    }
    cuts
}

/// Splits `items` at `cuts` into `cuts.len() + 1` consecutive slices.
pub(crate) fn split_at_cuts<T: Clone>(items: &[T], cuts: &[usize]) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&items.len())) {
        out.push(items[start..c].to_vec());
        start = c;
    }
    out
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A CIFAR-100-shaped label-only dataset for split tests.

    use super::super::dataset::{Dataset, Images, Split};

    /// 100 classes (superclass = class / 5, 20 superclasses), `per_train` / `per_test`
    /// images per class, labels interleaved; no images.
    pub fn cifar_like(per_train: usize, per_test: usize) -> Dataset {
        let split = |per: usize| {
            let labels: Vec<u32> = (0..per * 100).map(|i| (i % 100) as u32).collect();
            Split {
                coarse: Some(labels.iter().map(|&f| f / 5).collect()),
                labels,
                images: Images::Files(vec![]),
            }
        };
        Dataset {
            name: "cifar-like".into(),
            classes: (0..100).map(|c| format!("c{c}")).collect(),
            coarse_classes: Some((0..20).map(|c| format!("s{c}")).collect()),
            train: split(per_train),
            test: split(per_test),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_points_follow_the_reference_formula() {
        assert_eq!(cut_points(&[0.25, 0.25, 0.5], 10), vec![2, 5]);
        assert_eq!(cut_points(&[1.0], 7), Vec::<usize>::new());
        let parts = split_at_cuts(&[1, 2, 3, 4, 5], &[0, 2, 2]);
        assert_eq!(parts, vec![vec![], vec![1, 2], vec![], vec![3, 4, 5]]);
    }

    #[test]
    fn parameter_errors_name_the_flag() {
        assert!(check_params(0, 1.0, 10)
            .unwrap_err()
            .to_string()
            .contains("--clients"));
        assert!(check_params(2, 0.0, 10)
            .unwrap_err()
            .to_string()
            .contains("--alpha"));
        assert!(check_params(2, -1.0, 10)
            .unwrap_err()
            .to_string()
            .contains("--alpha"));
        assert!(check_params(20, 1.0, 10)
            .unwrap_err()
            .to_string()
            .contains("more than the 10"));
    }
}

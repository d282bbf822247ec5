//! The data flags shared by `fedpurel partition` and `fedpurel run`, and turning them into
//! a dataset plus its federated partition.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::data::partition::{import, PartitionMeta};
use crate::data::source::{DatasetName, LoadOptions};
use crate::data::synthetic::SyntheticSpec;
use crate::data::world::{Domain, WorldSpec};
use crate::data::{ClientTest, Dataset, LongTail, Partition, Scheme, SplitConfig};
use crate::rng;

/// The data flags shared by `partition` and `run`: which dataset, the long-tail cut and
/// the client split.
#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataArgs {
    /// Dataset to split.
    #[arg(long, value_enum, default_value = "cifar100")]
    pub dataset: DatasetName,
    /// Data root (the folder holding cifar-100-python/, the LT list files, or the class
    /// folders). Not needed for `synthetic` and `world`.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Imbalance factor n_max / n_min of the long-tail cut (≥ 1; 100 = the paper's
    /// setting). Default 100; not used by imagenet-lt / places-lt (already long-tailed).
    #[arg(long)]
    pub imb_factor: Option<f64>,
    /// Number of clients K.
    #[arg(long, default_value_t = 20)]
    pub clients: usize,
    /// Dirichlet concentration α (smaller = more heterogeneous clients).
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    /// Run seed (the long-tail cut and the split use its named streams).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Split scheme. Default: the reference's for the dataset (cifar100, synthetic:
    /// labeldir100; imagenet-lt, places-lt, world: dirichlet; folder: capped).
    #[arg(long, value_enum)]
    pub split: Option<Scheme>,
    /// Per-client test sets for `dirichlet` / `iid`. Default: balanced (places-lt:
    /// independent, as the reference; world: follow-train).
    #[arg(long, value_enum)]
    pub client_test: Option<ClientTest>,
    /// Import this split instead of drawing one (a reference export or a partition.json).
    #[arg(long)]
    pub split_file: Option<PathBuf>,
    /// Test fraction for an image folder without train/ and test/ sub-folders.
    #[arg(long, default_value_t = 0.5)]
    pub test_fraction: f64,
    /// Skip checking that every image listed by imagenet-lt / places-lt exists.
    #[arg(long)]
    pub no_image_check: bool,
    /// Synthetic dataset: number of classes.
    #[arg(long, default_value_t = 100)]
    pub synthetic_classes: usize,
    /// Synthetic dataset: training images per class.
    #[arg(long, default_value_t = 500)]
    pub synthetic_train_per_class: usize,
    /// Synthetic dataset: test images per class.
    #[arg(long, default_value_t = 100)]
    pub synthetic_test_per_class: usize,
    /// World dataset: training images per class before the long-tail cut (n_max).
    #[arg(long, default_value_t = 500)]
    #[serde(default = "default_world_train")]
    pub world_train_per_class: usize,
    /// World dataset: test images per class.
    #[arg(long, default_value_t = 50)]
    #[serde(default = "default_world_test")]
    pub world_test_per_class: usize,
    /// World dataset: which domain (downstream = the federated task; pretrain = the
    /// distribution the demo CLIP was trained on, to see the domain shift).
    #[arg(long, value_enum, default_value = "downstream")]
    #[serde(default = "default_world_domain")]
    pub world_domain: Domain,
    /// World dataset: the world's seed (fixed, so that --seed varies the split and the
    /// initialization, not the images).
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub world_seed: u64,
}

fn default_world_train() -> usize {
    WorldSpec::default().train_per_class
}

fn default_world_test() -> usize {
    WorldSpec::default().test_per_class
}

fn default_world_domain() -> Domain {
    Domain::Downstream
}

impl DataArgs {
    /// The world images these flags select (`--dataset world`).
    pub fn world_spec(&self) -> WorldSpec {
        WorldSpec {
            train_per_class: self.world_train_per_class,
            test_per_class: self.world_test_per_class,
            domain: self.world_domain,
            seed: self.world_seed,
        }
    }

    /// Loads the dataset and builds (or imports) its partition.
    pub fn load(&self) -> Result<(Dataset, Partition)> {
        let args = self;
        let opts = LoadOptions {
            root: args.root.clone(),
            seed: args.seed,
            test_fraction: args.test_fraction,
            check_images: !args.no_image_check,
            synthetic: SyntheticSpec {
                classes: args.synthetic_classes,
                train_per_class: args.synthetic_train_per_class,
                test_per_class: args.synthetic_test_per_class,
                seed: args.seed,
                ..SyntheticSpec::default()
            },
            world: self.world_spec(),
        };
        let ds = args.dataset.load(&opts)?;
        let c = ds.num_classes();
        let meta = PartitionMeta {
            dataset: ds.name.clone(),
            ..PartitionMeta::default()
        };
        let partition = if let Some(file) = &args.split_file {
            if args.split.is_some() || args.client_test.is_some() || args.imb_factor.is_some() {
                bail!("--split-file fixes the split: drop --split, --client-test and --imb-factor");
            }
            let mut p = import::read(file)?;
            p.check(&ds)
                .map_err(|e| e.context(format!("{} does not fit this dataset", file.display())))?;
            p.meta.dataset = ds.name.clone();
            p
        } else {
            let scheme = args.split.unwrap_or(args.dataset.default_scheme());
            if args.client_test.is_some() && !matches!(scheme, Scheme::Dirichlet | Scheme::Iid) {
                bail!(
                    "--client-test applies to --split dirichlet and iid; {scheme:?} builds its own test sets"
                );
            }
            let lt = if args.dataset.needs_longtail_cut() {
                let f = args.imb_factor.unwrap_or(100.0);
                LongTail::subsample(&ds.train, c, f, &mut rng::stream(args.seed, "longtail"))?
            } else {
                if args.imb_factor.is_some() {
                    bail!(
                        "--imb-factor does not apply to {}: its list files are already long-tailed",
                        ds.name
                    );
                }
                LongTail::identity(&ds.train, c)?
            };
            let cfg = SplitConfig {
                scheme,
                client_test: args.client_test.unwrap_or(args.dataset.default_client_test()),
                clients: args.clients,
                alpha: args.alpha,
                seed: args.seed,
            };
            let meta = PartitionMeta {
                scheme: format!("{scheme:?}").to_lowercase(),
                imb_factor: args
                    .dataset
                    .needs_longtail_cut()
                    .then(|| args.imb_factor.unwrap_or(100.0)),
                ..meta
            };
            Partition::build(&ds, &lt, &cfg, meta)?
        };
        Ok((ds, partition))
    }
}

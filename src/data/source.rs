//! Picking a dataset by name (`--dataset`) and the per-dataset defaults that follow the
//! reference: which split scheme, which per-client test sets, whether the long-tail cut
//! applies, which transform.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::dataset::Dataset;
use super::listfile::ListDataset;
use super::partition::{ClientTest, Scheme};
use super::synthetic::SyntheticSpec;
use super::transforms::TransformKind;
use super::world::WorldSpec;
use super::{cifar, folder, listfile, synthetic, world};

/// The datasets fedpurel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// CIFAR-100 (`cifar-100-python/` or `cifar-100-binary/` under the root).
    Cifar100,
    /// ImageNet-LT list files + ImageNet-1k images.
    ImagenetLt,
    /// Places-LT list files + Places365 images.
    PlacesLt,
    /// An image folder `root/<class>/<image>`.
    Folder,
    /// The seeded synthetic dataset (no files).
    Synthetic,
    /// The synthetic image–text world's downstream task (no files; see `data::world`).
    World,
}

/// What loading needs beyond the name.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Data root (not used by `synthetic`).
    pub root: Option<PathBuf>,
    /// Seed (folder test split, synthetic images).
    pub seed: u64,
    /// Test fraction of a folder without `train/` + `test/`.
    pub test_fraction: f64,
    /// Check that every listed image file exists (list files).
    pub check_images: bool,
    /// Shape of the synthetic dataset.
    pub synthetic: SyntheticSpec,
    /// Which images of the world.
    pub world: WorldSpec,
}

impl DatasetName {
    /// Whether the exponential long-tail cut applies (the LT list files are already
    /// long-tailed).
    pub fn needs_longtail_cut(self) -> bool {
        !matches!(self, DatasetName::ImagenetLt | DatasetName::PlacesLt)
    }

    /// The reference's split for this dataset.
    pub fn default_scheme(self) -> Scheme {
        match self {
            DatasetName::Cifar100 | DatasetName::Synthetic => Scheme::LabelDir100,
            DatasetName::ImagenetLt | DatasetName::PlacesLt | DatasetName::World => Scheme::Dirichlet,
            DatasetName::Folder => Scheme::Capped,
        }
    }

    /// The reference's per-client test sets (for `dirichlet` / `iid`). The world's
    /// clients are tested on their own label distribution (`follow-train`): the demo is
    /// about personalization, and in the paper's CIFAR-100 protocol too each client's test
    /// set follows its training distribution.
    pub fn default_client_test(self) -> ClientTest {
        match self {
            DatasetName::PlacesLt => ClientTest::Independent,
            DatasetName::World => ClientTest::FollowTrain,
            _ => ClientTest::Balanced,
        }
    }

    /// The reference's transform (the world: its images as they are, CLIP-normalized).
    pub fn default_transform(self) -> TransformKind {
        match self {
            DatasetName::Cifar100 | DatasetName::Synthetic => TransformKind::Cifar,
            DatasetName::World => TransformKind::Native,
            _ => TransformKind::Clip,
        }
    }

    /// Loads the dataset.
    pub fn load(self, opts: &LoadOptions) -> Result<Dataset> {
        let root = || {
            opts.root
                .as_deref()
                .with_context(|| format!("--dataset {self:?} needs --root").to_lowercase())
        };
        match self {
            DatasetName::Cifar100 => cifar::load(root()?),
            DatasetName::ImagenetLt => listfile::load(ListDataset::ImageNetLt, root()?, opts.check_images),
            DatasetName::PlacesLt => listfile::load(ListDataset::PlacesLt, root()?, opts.check_images),
            DatasetName::Folder => folder::load(root()?, opts.test_fraction, opts.seed),
            DatasetName::Synthetic => synthetic::generate(&opts.synthetic),
            DatasetName::World => world::generate(&opts.world),
        }
    }
}

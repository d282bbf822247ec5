//! Everything between files on disk and "client k's training batch".
//!
//! * [`dataset`] — the [`Dataset`] type (class names, train/test splits, images in memory
//!   or on disk) every reader produces.
//! * Readers: [`cifar`] (CIFAR-100, pickle and binary, over [`pickle`]), [`listfile`]
//!   (ImageNet-LT / Places-LT list files), [`folder`] (`root/<class>/<image>`),
//!   [`synthetic`] (seeded coloured patterns), [`world`] (a synthetic image–text world of
//!   compositional classes with pretraining and downstream domains). [`source`] picks one
//!   by name.
//! * [`longtail`] — the exponential long-tail profile, the sub-sampling, and the
//!   Many / Medium / Few [`ClassGroups`].
//! * [`partition`] — client splits (`labeldir100`, `dirichlet`, `iid`, `capped`, import of
//!   a reference split) and the [`Partition`] type written to `partition.json`.
//! * [`transforms`] — the CIFAR and CLIP pipelines; [`loader`] — a parallel, bounded-
//!   prefetch batch iterator over a client's samples; [`features`] — the image-feature
//!   cache for frozen encoders.
//!
//! Randomness comes from named streams of the run seed ([`crate::rng`]).

pub mod cifar;
pub mod dataset;
pub mod features;
pub mod folder;
pub mod listfile;
pub mod loader;
pub mod longtail;
pub mod partition;
pub mod pickle;
pub mod source;
pub mod synthetic;
pub mod transforms;
pub mod world;

pub use dataset::{Dataset, Images, Split, SplitKind};
pub use longtail::{ClassGroups, Group, LongTail};
pub use partition::{ClientSplit, ClientTest, Partition, Scheme, SplitConfig};

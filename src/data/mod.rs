//! Datasets, long-tail profiles, client splits, transforms and the image-feature cache.

pub mod features;

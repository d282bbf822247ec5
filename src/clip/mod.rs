//! CLIP: configuration, checkpoints, tokenizer, preprocessing, encoders, zero-shot head.
//!
//! Frozen encoders get explicit backward passes ([`block`], [`ops`]) instead of general
//! autodiff: forwards keep what the backward needs, and each backward maps several
//! cotangents at once to input and LoRA gradients.

pub mod block;
pub mod checkpoint;
pub mod config;
pub mod head;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod preprocess;
pub mod random;
pub mod text;
pub mod tokenizer;
pub mod vision;
pub mod zeroshot;

pub use checkpoint::{Checkpoint, Layout};
pub use config::ClipConfig;
pub use model::{Clip, LoadOptions};

//! CLIP: configuration, checkpoints, tokenizer, preprocessing, encoders, zero-shot head.
//!
//! The encoders get explicit backward passes ([`block`], [`ops`]) instead of general
//! autodiff: forwards keep what the backward needs, and each backward maps several
//! cotangents at once to input and LoRA gradients — and, when the forward was asked to
//! keep a weight tape, to the gradients of every weight ([`weights::ClipGrads`]), which
//! pretraining ([`crate::pretrain`]) uses.

pub mod attention;
pub mod attention_past;
pub mod block;
pub mod checkpoint;
pub mod config;
pub mod head;
pub mod init;
pub mod kernels;
pub mod lora_rows;
pub mod matmul;
pub mod model;
pub mod ops;
pub mod packing;
pub mod params;
pub mod prepacked;
pub mod preprocess;
pub mod random;
pub mod text;
pub mod tokenizer;
pub mod vision;
pub mod weights;
pub mod zeroshot;

pub use checkpoint::{Checkpoint, Layout};
pub use config::ClipConfig;
pub use model::{Clip, LoadOptions};
pub use weights::{ClipGrads, ClipWeights};

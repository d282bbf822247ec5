//! Trainable parameter sets that plug into the frozen CLIP: the CoOp prompt learner,
//! LoRA on attention projections, and the CLIP-Adapter.

pub mod adapter;
pub mod kind;
pub mod lora;
pub mod model;
pub mod params;
pub mod prompt;

pub use kind::{LoraEncoder, PeftKind};

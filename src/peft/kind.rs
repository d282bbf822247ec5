//! The kinds of parameter-efficient fine-tuning a run can choose (`--peft`), and where
//! LoRA's adapters go (`--lora-encoder`).

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// Which parameter-efficient fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeftKind {
    /// CoOp context vectors (n_ctx = 4, shared).
    Prompt,
    /// LoRA on the vision encoder's q, k, v (rank 8, α 16, scale α/√r, dropout 0.25).
    Lora,
    /// The gated image-feature adapter.
    Adapter,
}

/// Which encoders carry LoRA adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LoraEncoder {
    /// The image tower (the reference's choice).
    #[default]
    Vision,
    /// The text tower (image features stay frozen and cached).
    Text,
    /// Both towers.
    Both,
}

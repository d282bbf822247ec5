//! fedpurel: federated, long-tailed, personalized fine-tuning of CLIP.
//!
//! The crate follows the data flow of the method (see `docs/architecture.md`):
//!
//! * [`clip`] — CLIP itself: configuration, checkpoint loading (Hugging Face and OpenAI
//!   key layouts), the BPE tokenizer, image preprocessing, the text and vision encoders
//!   with explicit backward passes, and the zero-shot head.
//! * [`peft`] — trainable parameter sets (prompt learner, LoRA, adapter) and their
//!   (de)serialization.
//! * [`objective`] — cross-entropy, TKL, gradient purification, the stage-2 loss: values
//!   and gradients w.r.t. logits.
//! * [`fed`] — federated training (the optimizer so far).
//! * [`bench`] — benchmark workloads that print achieved GFLOP/s against the machine's
//!   measured matmul rate.

pub mod bench;
pub mod cli;
pub mod clip;
pub mod data;
pub mod device;
pub mod fed;
pub mod objective;
pub mod peft;

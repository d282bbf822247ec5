//! fedpurel: federated, long-tailed, personalized fine-tuning of CLIP.
//!
//! The crate follows the data flow of the method (see `docs/architecture.md`):
//!
//! * [`clip`] — CLIP itself: configuration, checkpoint loading (Hugging Face and OpenAI
//!   key layouts), the BPE tokenizer, image preprocessing, the text and vision encoders
//!   with explicit backward passes, and the zero-shot head.
//! * [`data`] — datasets, the long-tail profile, client partitions and transforms;
//!   [`rng`] — the named random streams that make every split reproducible.
//! * [`report`] — atomic writes and plots (the partition heatmap).
//! * [`bench`] — benchmark workloads that print achieved GFLOP/s against the machine's
//!   measured matmul rate.
//!
//! Later layers (`peft`, `objective`, `fed`, `metrics`, `report`) build on these.

pub mod bench;
pub mod cli;
pub mod clip;
pub mod data;
pub mod device;
pub mod report;
pub mod rng;

//! fedpurel: federated, long-tailed, personalized fine-tuning of CLIP.
//!
//! The crate follows the data flow of the method (see `docs/architecture.md`):
//!
//! * [`clip`] — CLIP itself: configuration, checkpoint loading (Hugging Face and OpenAI
//!   key layouts), the BPE tokenizer, image preprocessing, the text and vision encoders
//!   with explicit backward passes, and the zero-shot head.
//! * [`data`] — datasets, the long-tail profile, client partitions, transforms and the
//!   image-feature cache; [`rng`] — the named random streams that make every split
//!   reproducible.
//! * [`peft`] — trainable parameter sets (prompt learner, LoRA, adapter) and their
//!   (de)serialization.
//! * [`objective`] — cross-entropy, TKL, gradient purification, the stage-2 loss: values
//!   and gradients w.r.t. logits.
//! * [`fed`] — federated training: the optimizer and the local steps of both stages.
//! * [`pretrain`] — contrastive pretraining of a small CLIP (all weights): InfoNCE,
//!   AdamW, cosine schedule, and a [`pretrain::Trainer`] fed by a caller's batch source.
//! * [`metrics`] — accuracy per Many/Medium/Few group, balancedness, per-class tables.
//! * [`report`] — atomic writes, run directories, comparison tables and plots (partition
//!   heatmap, per-class accuracy against training count, metrics per round).
//! * [`setup`] — a run built from its configuration: presets, config files, loading
//!   data and model, the federation and algorithm, the whole run with progress events.
//! * [`bridge`] — one client's work (or the server's evaluation) for an outside
//!   orchestrator such as Flower; the Python module in `bindings/python` wraps it.
//! * [`bench`] — benchmark workloads that print achieved GFLOP/s against the machine's
//!   measured matmul rate.
//! * [`pools`] — tasks on threads with rayon pools of their own (grid cells, clients).
//! * [`machine`] — what the last bits of CPU results depend on (the kernel signature).
//! * [`cli`] — the subcommands, among them `demo`: the whole setting on the synthetic
//!   world ([`data::world`]) on a CPU in minutes.

pub mod bench;
pub mod bridge;
pub mod cli;
pub mod clip;
pub mod data;
pub mod device;
pub mod faults;
pub mod fed;
pub mod machine;
pub mod metrics;
pub mod objective;
pub mod peft;
pub mod pools;
pub mod pretrain;
pub mod report;
pub mod rng;
pub mod setup;

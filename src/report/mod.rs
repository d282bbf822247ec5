//! Run outputs: files written atomically, and plots.
//!
//! * [`atomic`] — write-to-temporary-then-rename, so a reader never sees half a file.
//! * [`checkpoints`] — the committed training state of a run: round folders with a
//!   checksummed manifest, a `latest` pointer, fallback to the previous round.
//! * [`run_dir`] — the run directory: config, metrics, summaries, lock.
//! * [`compare`] — the mean ± std table of a grid of runs.
//! * [`evidence`] — `evidence.json`: a grid's numbers with their seed spread, the
//!   TKL/KL–balancedness correlations, stability, gradient angles, and the verdict.
//! * [`heatmap`] — the clients × classes heatmap of a partition (PNG).
//! * [`client_dir`] — a remote client's state directory (private parameters, pending
//!   personalization), so a restarted client process continues.
//! * [`plots`] — per-class accuracy against training count, metrics per round, scatter
//!   panels, image grids (PNG, with the bundled font).

pub mod atomic;
pub mod checkpoints;
pub mod client_dir;
pub mod compare;
pub mod evidence;
pub mod heatmap;
pub mod plots;
pub mod run_dir;

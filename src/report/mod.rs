//! Run outputs: files written atomically, and plots.
//!
//! * [`atomic`] — write-to-temporary-then-rename, so a reader never sees half a file.
//! * [`heatmap`] — the clients × classes heatmap of a partition (PNG).
//! * [`compare`] — the mean ± std table of a grid of runs.
//! * [`plots`] — per-class accuracy against training count, metrics per round, image
//!   grids (PNG, with the bundled font).
//! * [`run_dir`] — the run directory layout.

pub mod atomic;
pub mod compare;
pub mod heatmap;
pub mod plots;
pub mod run_dir;

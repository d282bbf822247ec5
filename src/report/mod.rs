//! Run outputs: files written atomically, and plots.
//!
//! * [`atomic`] — write-to-temporary-then-rename, so a reader never sees half a file.
//! * [`heatmap`] — the clients × classes heatmap of a partition (PNG).

pub mod atomic;
pub mod compare;
pub mod heatmap;
pub mod run_dir;

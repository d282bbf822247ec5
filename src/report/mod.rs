//! Run outputs: files written atomically, and plots.
//!
//! * [`atomic`] — write-to-temporary-then-rename, so a reader never sees half a file.
//! * [`heatmap`] — the clients × classes heatmap of a partition (PNG).
//! * [`client_dir`] — a remote client's state directory (private parameters, pending
//!   personalization), so a restarted client process continues.

pub mod atomic;
pub mod client_dir;
pub mod compare;
pub mod heatmap;
pub mod run_dir;

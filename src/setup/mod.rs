//! Building a run as a library: its configuration ([`config`], [`presets`], [`data`]),
//! loading data, split, model and tokenizer ([`load()`]), the federation and algorithm it
//! names ([`federation()`], [`algorithm()`]), and a whole run in its run directory
//! ([`execute()`]), reporting to a [`Progress`]. The CLI (`fedpurel run`, `compare`,
//! `demo`, `eval`, `bench`), the Python/Flower client ([`crate::bridge`]) and the tests
//! all start here.

pub mod config;
pub mod data;
pub mod demo_model;
mod execute;
mod federation;
mod load;
pub mod presets;
pub mod progress;

pub use config::{read_config, PeftKind, RunConfig};
pub use execute::execute;
pub use federation::{algorithm, federation, identity};
pub use load::{load, Loaded};
pub use progress::{Event, Progress, Quiet};

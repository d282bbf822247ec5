//! What a run reports while it works, so that a terminal can draw bars, a notebook print
//! lines, and a test stay quiet — without the library knowing which.

use std::path::Path;

use crate::data::dataset::SplitKind;

/// One thing a run tells its [`Progress`].
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Frozen image features of `images` images of `split` are being encoded (or read
    /// back from the feature cache).
    Encoding {
        /// Which split.
        split: SplitKind,
        /// How many images.
        images: usize,
    },
    /// The encoding announced last has finished.
    Encoded,
    /// The run directory `run` resumes after `rounds_done` completed rounds.
    Resuming {
        /// The run directory.
        run: &'a Path,
        /// Rounds already completed.
        rounds_done: usize,
    },
    /// Training of `algorithm` starts (or continues) at `rounds_done` of `rounds`.
    Training {
        /// The algorithm's name.
        algorithm: &'a str,
        /// Rounds already completed.
        rounds_done: usize,
        /// Rounds in all.
        rounds: usize,
    },
    /// A phase of round `round` starts (e.g. `stage 1: client 3`).
    Phase {
        /// Round index.
        round: usize,
        /// What starts.
        phase: &'a str,
    },
    /// Round `round` is complete, its metrics and checkpoint written.
    RoundDone {
        /// Round index.
        round: usize,
        /// GM accuracy over all classes (%).
        gm_all: f64,
        /// PM accuracy over all classes (%).
        pm_all: f64,
    },
    /// Training is over (the summary follows).
    Finished,
}

/// Receives a run's [`Event`]s.
pub trait Progress: Sync {
    /// Called for every event, in order; from the thread that runs the run, except that
    /// while rounds overlap (`crate::fed::overlap`) the phases of round t + 1's local
    /// training are reported from another thread, between round t's phases.
    fn report(&self, event: Event<'_>);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn report(&self, _event: Event<'_>) {}
}

impl<F: Fn(Event<'_>) + Sync> Progress for F {
    fn report(&self, event: Event<'_>) {
        self(event)
    }
}

//! The terminal's view of a run's [`Event`]s: a spinner while image features are
//! encoded, a bar over rounds that names the phase in progress, a line on resume.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::setup::{Event, Progress};

/// Draws a run's progress on stderr (indicatif hides it when stderr is not a terminal).
#[derive(Default)]
pub struct Terminal {
    bar: Mutex<Option<ProgressBar>>,
}

impl Terminal {
    fn replace(&self, bar: Option<ProgressBar>) {
        let mut slot = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.take() {
            old.finish_and_clear();
        }
        *slot = bar;
    }

    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f(bar)
        }
    }
}

impl Progress for Terminal {
    fn report(&self, event: Event<'_>) {
        match event {
            Event::Encoding { split, images } => {
                let spinner = ProgressBar::new_spinner().with_message(format!(
                    "encoding {images} {split} images (cached after the first run)"
                ));
                spinner.enable_steady_tick(Duration::from_millis(200));
                self.replace(Some(spinner));
            }
            Event::Encoded | Event::Finished => self.replace(None),
            Event::Resuming { run, rounds_done } => {
                eprintln!("resuming {} after round {rounds_done}", run.display())
            }
            Event::Training {
                algorithm,
                rounds_done,
                rounds,
            } => {
                let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} rounds  {msg}")
                    .expect("a valid progress template");
                let bar = ProgressBar::new(rounds as u64).with_style(style);
                bar.set_prefix(algorithm.to_string());
                bar.set_position(rounds_done as u64);
                self.replace(Some(bar));
            }
            Event::Phase { round, phase } => {
                self.with_bar(|b| b.set_message(format!("round {round}: {phase}")))
            }
            Event::RoundDone { gm_all, pm_all, .. } => self.with_bar(|b| {
                b.set_message(format!("GM {gm_all:.2} PM {pm_all:.2}"));
                b.inc(1);
            }),
        }
    }
}

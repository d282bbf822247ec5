//! Steps of a one-core task that take every core once the task beside it has finished.
//!
//! Overlapped rounds (`crate::fed::overlap`) run two halves on one core each: round t's
//! personalization and evaluation, and round t + 1's local training. Whichever ends first
//! would leave its core idle while the other finishes alone; at ViT-B/16 that was a
//! quarter of an 8-client round, and at round 0 (personalization of every client beside
//! an 8-client chain) half of its personalization. A [`Widen`] gives the idle core to the
//! other half's training steps: each half runs *within* its own widen
//! ([`Widen::within`]), and every step it runs through [`step`] goes, once the other half
//! has [`open`](Widen::open)ed it, to a pool with a thread per core instead of the half's
//! one-thread pool. Only whole steps move, so a step never changes threads halfway; and
//! every parallel loop of a step gives the same bits on any number of threads (products
//! split by columns, never by their inner dimension; loops combine in item order), so a
//! widened step computes exactly what it would alone.
//!
//! Without a widen on the current thread, [`step`] is a plain call.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result};

thread_local! {
    /// The widen the current thread runs within, if any (set by [`Widen::within`]).
    static WITHIN: Cell<Option<*const Widen>> = const { Cell::new(None) };
}

/// A pool for every core, which the steps of one thread use once opened (see the module
/// doc).
pub struct Widen {
    pool: rayon::ThreadPool,
    open: AtomicBool,
    /// Steps that ran on the wide pool (for tests and diagnostics).
    widened: AtomicUsize,
}

impl Widen {
    /// A closed widen whose pool has `threads` threads (8 MiB stacks, as every pool of
    /// ours).
    pub fn new(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .stack_size(8 << 20)
            .build()
            .context("cannot start a thread pool")?;
        Ok(Self {
            pool,
            open: AtomicBool::new(false),
            widened: AtomicUsize::new(0),
        })
    }

    /// Lets the steps of the thread within this widen use its pool from their next step
    /// on: the task beside it has finished and its core is free.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Closes the widen again (for its next use): steps stay on their own thread.
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// Runs `f` on this thread within this widen: the [`step`]s it runs take the wide
    /// pool once the widen is open.
    pub fn within<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<*const Widen>);
        impl Drop for Restore {
            fn drop(&mut self) {
                WITHIN.with(|w| w.set(self.0));
            }
        }
        let _restore = Restore(WITHIN.with(|w| w.replace(Some(self as *const Widen))));
        f()
    }

    /// How many steps have run on the wide pool so far.
    pub fn widened_steps(&self) -> usize {
        self.widened.load(Ordering::SeqCst)
    }
}

/// Runs one step `f`: on the wide pool when this thread runs within an open [`Widen`],
/// else here.
pub fn step<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let Some(widen) = WITHIN.with(Cell::get) else {
        return f();
    };
    // SAFETY: a widen is only installed by `Widen::within`, which outlives this call.
    let widen = unsafe { &*widen };
    if !widen.open.load(Ordering::SeqCst) {
        return f();
    }
    widen.widened.fetch_add(1, Ordering::SeqCst);
    widen.pool.install(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_stay_here_until_the_widen_opens_and_only_within_it() {
        let narrow = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let widen = Widen::new(3).unwrap();
        narrow.install(|| {
            assert_eq!(step(rayon::current_num_threads), 1, "outside any widen");
            widen.within(|| {
                assert_eq!(step(rayon::current_num_threads), 1, "closed");
                widen.open();
                assert_eq!(step(rayon::current_num_threads), 3, "open");
                assert_eq!(rayon::current_num_threads(), 1, "only steps move");
            });
            assert_eq!(step(rayon::current_num_threads), 1, "after leaving it");
        });
        assert_eq!(widen.widened_steps(), 1);
    }
}

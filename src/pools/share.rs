//! Loops one thread shares with another that has finished its own work.
//!
//! Overlapped rounds (`crate::fed::overlap`) run two halves on one core each: when one
//! half ends first, its core would idle while the other half finishes alone. A [`Share`]
//! lets the half that ends first help: the other half *leads* it ([`Share::lead`]), and
//! every [`for_each`] loop the leading thread runs is published so that the helping
//! thread, once it calls [`Share::serve`], claims items of it too. Each item runs on
//! whichever thread claims it, exactly as it would alone; results come back in item
//! order, so what a caller combines from them (sums, counts) is combined in the same order
//! as without help.
//!
//! Without a share led on the current thread, [`for_each`] is a plain loop.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use anyhow::{anyhow, Result};

thread_local! {
    /// The share the current thread leads, if any (set by [`Share::lead`]).
    static LEADING: Cell<Option<*const Share>> = const { Cell::new(None) };
}

/// A place where a leading thread publishes its loops and a helping thread takes items
/// of them (see the module doc).
#[derive(Default)]
pub struct Share {
    slot: Mutex<Slot>,
    changed: Condvar,
}

#[derive(Default)]
struct Slot {
    /// The loop now open to help, with its sequence number.
    job: Option<(u64, Arc<Job>)>,
    /// Loops published so far.
    published: u64,
    /// The leader has finished: no loop will come.
    closed: bool,
}

/// One published loop: items `0..n` of `run`, claimed in order.
struct Job {
    /// The loop body with its lifetime erased; only called for claimed items `< n`, all
    /// of which finish before [`for_each`] returns (see the safety note there).
    run: *const (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: Mutex<usize>,
    all_done: Condvar,
}

// SAFETY: `run` points to a `Sync` closure that outlives every call through it (see
// `for_each`); the other fields are thread-safe.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs items until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            if i >= self.n {
                return;
            }
            // SAFETY: item i < n is claimed once, and `for_each` does not return before
            // it is counted done below, so the closure is alive.
            unsafe { (*self.run)(i) };
            let mut done = lock(&self.done);
            *done += 1;
            if *done == self.n {
                self.all_done.notify_all();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Share {
    /// A share with nothing published.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on this thread with this share led: the [`for_each`] loops it runs are
    /// published to the helper. Closes the share when `f` returns or unwinds, which
    /// ends the helper's [`serve`](Self::serve).
    pub fn lead<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Close<'a>(&'a Share, Option<*const Share>);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                LEADING.with(|l| l.set(self.1));
                lock(&self.0.slot).closed = true;
                self.0.changed.notify_all();
            }
        }
        let previous = LEADING.with(|l| l.replace(Some(self as *const Share)));
        let _close = Close(self, previous);
        f()
    }

    /// Helps with the leader's loops, item by item, until the leader has finished.
    pub fn serve(&self) {
        let mut seen = 0;
        loop {
            let job = {
                let mut slot = lock(&self.slot);
                loop {
                    match &slot.job {
                        Some((seq, job)) if *seq > seen => {
                            seen = *seq;
                            break job.clone();
                        }
                        _ if slot.closed => return,
                        _ => slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner()),
                    }
                }
            };
            job.work();
        }
    }
}

/// Runs `f(i)` for `i` in `0..n` and returns the results in order: on this thread alone,
/// or, when this thread leads a [`Share`], with its helper claiming items too. Loops
/// inside an item run on the thread that claimed it, alone. The first error in item order
/// is returned (every item runs); a panicking item becomes an error.
pub fn for_each<T: Send>(n: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    let Some(share) = LEADING.with(|l| l.take()) else {
        return (0..n).map(f).collect();
    };
    // SAFETY: a share is only installed by `Share::lead`, which outlives this call.
    let share = unsafe { &*share };
    struct Restore(*const Share);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEADING.with(|l| l.set(Some(self.0)));
        }
    }
    let _restore = Restore(share);
    let results: Vec<Mutex<Option<Result<T>>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let body = |i: usize| {
        let r = catch_unwind(AssertUnwindSafe(|| f(i)))
            .unwrap_or_else(|_| Err(anyhow!("item {i} of a shared loop panicked")));
        *lock(&results[i]) = Some(r);
    };
    let run: &(dyn Fn(usize) + Sync) = &body;
    // SAFETY: the erased lifetime is never outlived: every call goes through `Job::work`
    // for a claimed item < n, and this function waits below until all n items are done
    // before `body` (and what it borrows) goes out of scope. Later claims see `next ≥ n`
    // and call nothing.
    let run: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(run) };
    let job = Arc::new(Job {
        run,
        n,
        next: AtomicUsize::new(0),
        done: Mutex::new(0),
        all_done: Condvar::new(),
    });
    {
        let mut slot = lock(&share.slot);
        slot.published += 1;
        slot.job = Some((slot.published, job.clone()));
    }
    share.changed.notify_all();
    job.work();
    lock(&share.slot).job = None;
    let mut done = lock(&job.done);
    while *done < n {
        done = job.all_done.wait(done).unwrap_or_else(|e| e.into_inner());
    }
    drop(done);
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Err(anyhow!("item {i} of a shared loop did not run")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn without_a_share_it_is_a_plain_loop() {
        let out = for_each(5, |i| Ok(i * i)).unwrap();
        assert_eq!(out, vec![0, 1, 4, 9, 16]);
        let e = for_each(3, |i| if i == 1 { anyhow::bail!("no {i}") } else { Ok(i) }).unwrap_err();
        assert_eq!(e.to_string(), "no 1");
    }

    /// The helper, once done with its own work, claims items of the leader's loops; the
    /// results come back in order, nested loops run alone, and the helper stops when the
    /// leader closes.
    #[test]
    fn a_helper_takes_items_and_the_results_keep_their_order() {
        let share = Share::new();
        let helped = AtomicUsize::new(0);
        let served = AtomicBool::new(false);
        let leader = std::thread::current().id();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                share.serve();
                served.store(true, Ordering::SeqCst);
            });
            share.lead(|| {
                for round in 0..3 {
                    let out = for_each(40, |i| {
                        if std::thread::current().id() != leader {
                            helped.fetch_add(1, Ordering::SeqCst);
                        } else {
                            // The leader waits (10 s at most) until the helper has taken
                            // an item, so the check below does not depend on how the threads are scheduled.
                            let deadline = Instant::now() + Duration::from_secs(10);
                            while helped.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                        let inner = for_each(3, Ok)?;
                        Ok(round * 1000 + i + inner.len())
                    })
                    .unwrap();
                    assert_eq!(out, (0..40).map(|i| round * 1000 + i + 3).collect::<Vec<_>>());
                }
                let e = for_each(4, |i| {
                    if i == 2 {
                        panic!("boom");
                    }
                    Ok(i)
                })
                .unwrap_err();
                assert!(e.to_string().contains("item 2"), "{e}");
            });
        });
        assert!(
            served.load(Ordering::SeqCst),
            "the helper stops when the leader closes"
        );
        assert!(helped.load(Ordering::SeqCst) > 0, "the helper took no item");
        // After leading, loops are plain again.
        assert_eq!(for_each(2, Ok).unwrap(), vec![0, 1]);
    }
}

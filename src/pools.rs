//! Tasks on threads of their own, each thread with its own rayon pool: the cells of a
//! `compare` grid ([`crate::cli::compare`]), the clients of a round that train at once
//! (`crate::fed::at_once`) and the two halves of overlapped rounds (`crate::fed::overlap`).
//!
//! Own pools, not tasks of the shared one: a run blocks its thread on the batch loader's
//! channel while the loader decodes through the global pool, so runs occupying every
//! global worker would wait for a loader that can never run (tried: it deadlocks). And a
//! task whose parallel loops stay on its own pool never waits on another task's work
//! stolen by a thread the system has descheduled. The price: when fewer tasks than pools
//! remain, the idle pools' cores stay idle.

pub mod share;
pub mod widen;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// Runs `task(0..total)` on `pools` threads, each with a rayon pool of `threads_each`
/// threads (8 MiB stacks), taking tasks in order; returns the results in task order. After
/// a failure no new task starts; the first failure (in task order) is returned.
pub fn on_own_pools<T: Send>(
    total: usize,
    pools: usize,
    threads_each: usize,
    task: &(dyn Fn(usize) -> Result<T> + Sync),
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<T>>>> = Mutex::new((0..total).map(|_| None).collect());
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..pools.min(total) {
            // The same 8 MiB stacks as the main pool (src/main.rs).
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads_each)
                .stack_size(8 << 20)
                .build()
                .context("cannot start a thread pool")?;
            let (next, failed, results) = (&next, &failed, &results);
            handles.push(scope.spawn(move || {
                pool.install(|| loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= total || failed.load(Ordering::SeqCst) {
                        break;
                    }
                    let r = task(n);
                    failed.fetch_or(r.is_err(), Ordering::SeqCst);
                    results.lock().unwrap_or_else(|e| e.into_inner())[n] = Some(r);
                })
            }));
        }
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Ok(())
    })?;
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::with_capacity(total);
    for (n, r) in results.into_iter().enumerate() {
        match r {
            Some(r) => out.push(r?),
            None => bail!("task {} of {total} did not run: an earlier task failed", n + 1),
        }
    }
    Ok(out)
}

/// Runs `a` and `b` at once, each on a thread of its own with a one-thread rayon pool of
/// its own (8 MiB stacks), and returns both results; a panic in either is resumed here.
/// Neither runs the other's parallel work, and the global pool stays free for what they
/// wait on (a batch loader decodes through it).
pub fn beside<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> Result<(A, B)> {
    let pool = || {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .stack_size(8 << 20)
            .build()
            .context("cannot start a thread pool")
    };
    let (pool_a, pool_b) = (pool()?, pool()?);
    Ok(std::thread::scope(|scope| {
        let b = scope.spawn(move || pool_b.install(b));
        let ra = pool_a.install(a);
        match b.join() {
            Ok(rb) => (ra, rb),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use anyhow::bail;

    use super::*;

    #[test]
    fn a_failed_task_is_reported_and_stops_new_ones() {
        let ran = AtomicUsize::new(0);
        let e = on_own_pools(6, 2, 1, &|n| {
            ran.fetch_add(1, Ordering::SeqCst);
            if n == 1 {
                bail!("task {n} broke")
            }
            // The others take long enough for the failure to be seen before task 5.
            std::thread::sleep(std::time::Duration::from_millis(50));
            Ok(n)
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("task 1 broke"), "{e}");
        assert!(
            ran.load(Ordering::SeqCst) < 6,
            "new tasks started after the failure"
        );
        let all = on_own_pools(5, 3, 1, &|n| Ok(n * 10)).unwrap();
        assert_eq!(all, [0, 10, 20, 30, 40]);
    }

    #[test]
    fn beside_runs_both_on_pools_of_their_own_and_leaves_the_global_pool_free() {
        let global = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let (a, b) = global
            .install(|| {
                beside(
                    || (rayon::current_num_threads(), rayon::current_thread_index()),
                    // Work queued on the global pool from outside it (as a batch loader's
                    // thread does) still runs while both sides wait.
                    || std::thread::scope(|s| s.spawn(|| global.install(|| 7)).join().unwrap()),
                )
            })
            .unwrap();
        assert_eq!(a, (1, Some(0)));
        assert_eq!(b, 7);
    }

    #[test]
    fn each_task_runs_on_a_pool_of_the_size_asked_for() {
        let sizes = on_own_pools(4, 2, 3, &|_| Ok(rayon::current_num_threads())).unwrap();
        assert_eq!(sizes, [3, 3, 3, 3]);
    }
}

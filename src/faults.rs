//! Fault injection for the reliability tests (docs/reliability.md): named points in a run
//! where a test can kill the process or make a file write fail, so that every crash and
//! every write error the guarantees cover can be produced on purpose, deterministically.
//!
//! Off unless one of these environment variables is set when the process starts (the
//! cost is then one atomic load per point):
//! * `FEDPUREL_FAULT_TRACE=FILE` — append the label of every point passed to FILE, one
//!   per line (a test lists a run's points this way);
//! * `FEDPUREL_KILL_AT=N` — SIGKILL the process at the N-th point passed (counting from 1);
//! * `FEDPUREL_FAIL_WRITE=KIND@N` — the N-th atomic file write fails with `KIND`
//!   (`enospc`: the disk is full, `erofs`: the file system is read-only), as if the
//!   operating system had refused it.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

#[cfg(unix)]
use libc::{ENOSPC, EROFS};
#[cfg(not(unix))]
const ENOSPC: i32 = 112; // ERROR_DISK_FULL
#[cfg(not(unix))]
const EROFS: i32 = 19; // ERROR_WRITE_PROTECT

/// What the environment asked for.
struct Plan {
    trace: Option<std::path::PathBuf>,
    kill_at: Option<usize>,
    /// (OS error code, index of the failing write).
    fail_write: Option<(i32, usize)>,
}

fn plan() -> Option<&'static Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let trace = std::env::var_os("FEDPUREL_FAULT_TRACE").map(Into::into);
        let kill_at = std::env::var("FEDPUREL_KILL_AT")
            .ok()
            .and_then(|s| s.parse().ok());
        let fail_write = std::env::var("FEDPUREL_FAIL_WRITE").ok().and_then(|s| {
            let (kind, n) = s.split_once('@')?;
            let n = n.parse().ok()?;
            match kind {
                "enospc" => Some((ENOSPC, n)),
                "erofs" => Some((EROFS, n)),
                _ => None,
            }
        });
        (trace.is_some() || kill_at.is_some() || fail_write.is_some()).then_some(Plan {
            trace,
            kill_at,
            fail_write,
        })
    })
    .as_ref()
}

/// Marks a point of the run called `label` (e.g. `checkpoint:client-file`).
/// Points may be passed from two threads at once (overlapped rounds, `crate::fed::overlap`):
/// the count and the trace line are taken together, so line N of a trace is point N, and
/// each line is written whole.
pub fn point(label: &str) {
    let Some(plan) = plan() else { return };
    static PASSED: Mutex<usize> = Mutex::new(0);
    let mut passed = PASSED.lock().unwrap_or_else(|e| e.into_inner());
    *passed += 1;
    let n = *passed;
    if let Some(path) = &plan.trace {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = f.write_all(format!("{label}\n").as_bytes());
        }
    }
    drop(passed);
    if plan.kill_at == Some(n) {
        kill_self();
    }
}

/// Called by every atomic write before it touches the disk: the error the plan injects
/// for this write, if any.
pub fn write_error() -> Option<std::io::Error> {
    let (code, at) = plan()?.fail_write?;
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
    (n == at).then(|| std::io::Error::from_raw_os_error(code))
}

#[cfg(unix)]
fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[cfg(not(unix))]
fn kill_self() -> ! {
    std::process::abort()
}

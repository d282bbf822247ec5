//! Resources of this process: peak resident memory (Linux: `VmHWM` from
//! `/proc/self/status`, reset between workloads by writing 5 to `/proc/self/clear_refs`)
//! and CPU time (user + system, `getrusage`). None where unavailable.

/// Resets the high-water mark so the next reading covers only what follows.
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since the last reset, MiB.
pub fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system, all threads) this process has used so far, seconds.
#[cfg(unix)]
pub fn cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete `rusage` into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: initialized by the successful call above (and zeroed before it).
    let u = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Some(secs(u.ru_utime) + secs(u.ru_stime))
}

/// CPU time of this process (unavailable off Unix).
#[cfg(not(unix))]
pub fn cpu_seconds() -> Option<f64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_grows_with_work() {
        let Some(before) = super::cpu_seconds() else {
            return;
        };
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(super::cpu_seconds().unwrap() > before);
    }

    #[test]
    fn peak_grows_with_a_touched_allocation() {
        super::reset_peak();
        let Some(before) = super::peak_mib() else {
            return; // not Linux: nothing to measure
        };
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        let after = super::peak_mib().unwrap();
        assert!(after >= before + 60.0, "{before} → {after}");
    }
}

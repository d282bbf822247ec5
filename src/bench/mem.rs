//! Peak resident memory of this process (Linux): `VmHWM` from `/proc/self/status`, reset
//! between workloads by writing 5 to `/proc/self/clear_refs`. None where unavailable.

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

#[cfg(test)]
mod tests {
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

//! The machine's reference rate: f32 matrix multiplication through candle's backend,
//! the ceiling every other workload is compared with.

use anyhow::Result;
use candle_core::Device;

use super::{best_time, BenchResult};
use crate::clip::random::uniform;

/// Measures square f32 matmul of side `n` (best of `reps`) and returns GFLOP/s.
pub fn measure_peak(device: &Device, n: usize, reps: usize) -> Result<BenchResult> {
    let a = uniform(&[n, n], 1, 1.0, device)?;
    let b = uniform(&[n, n], 2, 1.0, device)?;
    let secs = best_time(reps, || {
        let c = a.matmul(&b)?;
        device.synchronize()?;
        Ok(c)
    })?;
    let flops = 2.0 * (n as f64).powi(3);
    let rate = flops / secs / 1e9;
    Ok(BenchResult::new(
        format!("matmul/f32/{n}"),
        secs,
        flops,
        rate,
        format!("{n}×{n}·{n}×{n}"),
    ))
}

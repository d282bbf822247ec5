//! Benchmark workloads. Each reports wall time, FLOPs counted from the shapes, achieved
//! GFLOP/s and the fraction of the machine's measured f32 matmul rate — numbers, never
//! pass/fail.

pub mod image_encoder;
pub mod matmul;
pub mod mem;
pub mod pretrain;
pub mod round;
pub mod text_encoder;

use serde::Serialize;

/// One measured workload.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BenchResult {
    /// Workload name (`text-encoder/plain-77/...`).
    pub name: String,
    /// Best wall time over the repetitions, seconds.
    pub seconds: f64,
    /// FLOPs executed, in units of 10⁹.
    pub gflop: f64,
    /// `gflop / seconds`.
    pub gflops_per_s: f64,
    /// `gflops_per_s` over the measured matmul rate.
    pub peak_fraction: f64,
    /// Free-form detail (shapes, ratios).
    pub detail: String,
    /// Peak resident memory of the process during the workload, MiB (Linux).
    #[serde(default)]
    pub peak_mib: Option<f64>,
}

impl BenchResult {
    /// Builds a result from a time and a FLOP count against a peak rate (GFLOP/s).
    pub fn new(
        name: impl Into<String>,
        seconds: f64,
        flops: f64,
        peak_gflops: f64,
        detail: impl Into<String>,
    ) -> Self {
        let gflop = flops / 1e9;
        let rate = gflop / seconds;
        BenchResult {
            name: name.into(),
            seconds,
            gflop,
            gflops_per_s: rate,
            peak_fraction: rate / peak_gflops,
            detail: detail.into(),
            peak_mib: mem::peak_mib(),
        }
    }
}

/// A timed workload without a FLOP count (e.g. a phase of a federated round).
pub fn timed(name: impl Into<String>, seconds: f64, detail: impl Into<String>) -> BenchResult {
    BenchResult {
        name: name.into(),
        seconds,
        gflop: 0.0,
        gflops_per_s: 0.0,
        peak_fraction: 0.0,
        detail: detail.into(),
        peak_mib: mem::peak_mib(),
    }
}

/// Runs `f` `reps` times after one warm-up and returns the best wall time in seconds.
pub fn best_time<T>(reps: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        std::hint::black_box(f()?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

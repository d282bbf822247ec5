//! Device selection: CPU by default, CUDA when built with the `cuda` feature.

use anyhow::{bail, Result};
use candle_core::Device;

/// Parses a device name (`cpu`, `cuda`, `cuda:N`) into a candle device.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        other => {
            let ordinal = if other == "cuda" {
                0
            } else if let Some(n) = other.strip_prefix("cuda:") {
                n.parse::<usize>().map_err(|_| {
                    anyhow::anyhow!("device `{other}`: expected `cpu`, `cuda` or `cuda:N`")
                })?
            } else {
                bail!("device `{other}`: expected `cpu`, `cuda` or `cuda:N`");
            };
            if !candle_core::utils::cuda_is_available() {
                bail!("device `{other}`: this build has no CUDA support (rebuild with `--features cuda`)");
            }
            Ok(Device::new_cuda(ordinal)?)
        }
    }
}

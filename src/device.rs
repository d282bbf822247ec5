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
                n.parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("device `{other}`: expected `cpu`, `cuda` or `cuda:N`"))?
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

/// Parses a precision name (`f32`, `f16`, `bf16`).
pub fn parse_dtype(name: &str) -> Result<candle_core::DType> {
    use candle_core::DType;
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => bail!("precision `{other}`: expected f32, f16 or bf16"),
    }
}

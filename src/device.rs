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
            Device::new_cuda(ordinal).map_err(|e| {
                anyhow::anyhow!(
                    "device `{other}`: could not open CUDA device {ordinal} ({e}); check that an \
                     NVIDIA GPU with that index is present (`nvidia-smi`) and that its driver \
                     supports CUDA 13.0 (R580 or newer, the toolkit tools/build-cuda.sh builds with)"
                )
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_checked_and_errors_say_what_to_do() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        for bad in ["gpu", "cuda:x", "cuda:", "CPU"] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains("expected `cpu`, `cuda` or `cuda:N`"), "{bad}: {e}");
        }
        match parse_device("cuda:1").map(|_| ()) {
            // A cuda build without that GPU: the driver's error, and what to check.
            Err(e) if candle_core::utils::cuda_is_available() => {
                let e = e.to_string();
                assert!(
                    e.contains("could not open CUDA device 1") && e.contains("nvidia-smi"),
                    "{e}"
                );
            }
            Err(e) => assert!(e.to_string().contains("--features cuda"), "{e}"),
            Ok(()) => assert!(candle_core::utils::cuda_is_available()),
        }
    }
}

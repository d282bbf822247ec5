//! What the last bits of fedpurel's CPU numbers depend on besides the inputs: the matmul
//! engine (`gemm`, candle's CPU backend) picks its microkernel from the instruction set
//! and splits the inner dimension into cache-sized blocks read from the CPU's cache
//! geometry, and each split rounds differently. Two machines with the same
//! [`kernel_signature`] compute the same bits; on others the numbers agree to float
//! rounding only (a few units in the 7th digit per matmul, more after training steps
//! whose decisions flip, such as purification's obtuse-angle test).

use gemm_common::cache::CACHE_INFO;

/// A one-line description of what the CPU kernels' rounding depends on: architecture,
/// FMA/AVX2/AVX-512 availability (gemm's microkernel), the L1/L2/L3 geometry `gemm`
/// blocks for, and the thread count.
pub fn kernel_signature() -> String {
    let caches: Vec<String> = CACHE_INFO
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "l{}={}KiB/{}-way/{}B",
                i + 1,
                c.cache_bytes / 1024,
                c.associativity,
                c.cache_line_bytes
            )
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{} {} {} threads={threads}",
        std::env::consts::ARCH,
        isa(),
        caches.join(" ")
    )
}

/// A short name for [`kernel_signature`]: `kernels-` and the first 8 hex digits of its
/// SHA-256 (e.g. the folder of a recording made on such machines).
pub fn kernel_signature_id() -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(kernel_signature().as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("kernels-{hex}")
}

#[cfg(target_arch = "x86_64")]
fn isa() -> String {
    format!(
        "fma={} avx2={} avx512f={}",
        std::arch::is_x86_feature_detected!("fma"),
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("avx512f")
    )
}

#[cfg(not(target_arch = "x86_64"))]
fn isa() -> String {
    String::from("isa=native")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_names_the_cache_geometry_and_is_stable() {
        let s = kernel_signature();
        assert!(
            s.contains("l1=") && s.contains("l3=") && s.contains("threads="),
            "{s}"
        );
        assert_eq!(s, kernel_signature());
        let id = kernel_signature_id();
        assert!(id.starts_with("kernels-") && id.len() == 16, "{id}");
    }
}

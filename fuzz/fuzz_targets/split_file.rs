//! A split exported from the reference or by `fedpurel partition` (`--split-file`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fedpurel::data::partition::import::parse(text, "partition.json");
    }
});

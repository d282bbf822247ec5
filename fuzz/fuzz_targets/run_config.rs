//! A run directory's `config.toml` given to `fedpurel run --config`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fedpurel::cli::run_config::parse_config(text, std::path::Path::new("config.toml"));
    }
});

//! Hugging Face `config.json` of a CLIP checkpoint.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fedpurel::clip::config::ClipConfig::from_hf_json(text, std::path::Path::new("config.json"));
    }
});

//! A checkpoint directory whose `model.safetensors` is the input (no `config.json`, so
//! the layout is detected and the architecture inferred from the tensor shapes): opening
//! it and loading both encoders gives a model or an error. Allocation is bounded by the
//! file: every tensor the loader reads must fit inside it.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary folder")).path()
}

fuzz_target!(|data: &[u8]| {
    let d = dir();
    if std::fs::write(d.join("model.safetensors"), data).is_err() {
        return;
    }
    if let Ok(ck) = fedpurel::clip::Checkpoint::open(d) {
        let _ = fedpurel::clip::Clip::from_checkpoint(&ck, &fedpurel::clip::LoadOptions::default());
    }
});

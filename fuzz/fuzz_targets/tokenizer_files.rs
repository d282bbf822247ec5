//! A checkpoint's `tokenizer.json`: parsing it and tokenizing a prompt with it.
//!
//! The `tokenizers` crate panics on some malformed files (huggingface/tokenizers#2151);
//! fedpurel catches those panics at its calls into the crate and returns an error. The
//! panic hook libFuzzer installs would abort before that catch, so this target restores
//! a silent hook: a panic that escapes fedpurel still aborts the run (libfuzzer-sys
//! aborts on a panic out of the target) and is reported as a crash.
#![no_main]
use std::sync::Once;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(tok) = fedpurel::clip::tokenizer::ClipTokenizer::from_tokenizer_json_str(text, "tokenizer.json") {
        let _ = tok.encode_prompt("a photo of a red circle.");
    }
});

//! A checkpoint's `tokenizer.json`: parsing it and tokenizing a prompt with it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(tok) = fedpurel::clip::tokenizer::ClipTokenizer::from_tokenizer_json_str(text, "tokenizer.json") {
        let _ = tok.encode_prompt("a photo of a red circle.");
    }
});

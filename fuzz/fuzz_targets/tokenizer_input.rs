//! Text given to CLIP's tokenizer (class names, templates, captions): any UTF-8 gives
//! `[SOT, …, EOT]` within the context length.
#![no_main]
use std::sync::OnceLock;

use fedpurel::clip::tokenizer::ClipTokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static ClipTokenizer {
    static TOK: OnceLock<ClipTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-clip/hf");
        ClipTokenizer::from_dir(&dir).expect("the fixture tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let tok = tokenizer();
    if let Ok(p) = tok.encode_prompt(text) {
        assert_eq!(p.ids.len(), ClipTokenizer::CONTEXT_LENGTH);
        assert_eq!(p.ids[0], tok.sot_id());
        assert_eq!(p.ids[p.eot], tok.eot_id());
    }
});

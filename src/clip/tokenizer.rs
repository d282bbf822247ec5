//! CLIP's byte-level BPE tokenizer: NFC, whitespace runs → one space, lower-case; CLIP's
//! split pattern; BPE with the `</w>` end-of-word suffix; `<|startoftext|>` … `<|endoftext|>`
//! around every text; context 77, truncated so that the end-of-text token survives, and
//! padded with 0 as OpenAI's `clip.tokenize` does.
//!
//! Reads `tokenizer.json` (the Hugging Face file) or builds the same pipeline from
//! `vocab.json` + `merges.txt`. The difference to OpenAI's Python tokenizer is its
//! `ftfy.fix_text` + `html.unescape` cleanup (mojibake and HTML entities), which no
//! class-name prompt needs.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::str::FromStr;

use tokenizers::Tokenizer;

/// Start-of-text token string.
pub const SOT: &str = "<|startoftext|>";
/// End-of-text token string.
pub const EOT: &str = "<|endoftext|>";

/// One prompt tokenized to the context length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// Token ids, padded with 0 to the context length.
    pub ids: Vec<u32>,
    /// Position of the end-of-text token.
    pub eot: usize,
}

/// CLIP's tokenizer.
pub struct ClipTokenizer {
    inner: Tokenizer,
    sot: u32,
    eot: u32,
    context_length: usize,
}

/// CLIP's pre-tokenization pattern (special tokens, contractions, letter runs, single
/// digits, other non-space runs).
const SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

impl ClipTokenizer {
    /// CLIP's context length.
    pub const CONTEXT_LENGTH: usize = 77;

    /// Loads `tokenizer.json` from `dir`, else `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        if tj.is_file() {
            return Self::from_tokenizer_json(&tj);
        }
        let (v, m) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if v.is_file() && m.is_file() {
            return Self::from_vocab_merges(&v, &m);
        }
        bail!(
            "{}: no tokenizer files (expected tokenizer.json, or vocab.json and merges.txt)",
            dir.display()
        )
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        Self::from_tokenizer_json_str(&text, &path.display().to_string())
    }

    /// Parses the text of a `tokenizer.json`; `origin` names it in errors.
    pub fn from_tokenizer_json_str(text: &str, origin: &str) -> Result<Self> {
        let inner = guarded(origin, || Tokenizer::from_str(text))?
            .map_err(|e| anyhow!("{origin}: does not parse as a tokenizer: {e}"))?;
        Self::wrap(inner, origin)
    }

    /// Builds CLIP's pipeline around `vocab.json` and `merges.txt`.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        let vtext =
            std::fs::read_to_string(vocab).with_context(|| format!("{}: cannot read", vocab.display()))?;
        let mtext =
            std::fs::read_to_string(merges).with_context(|| format!("{}: cannot read", merges.display()))?;
        Self::from_vocab_merges_str(
            &vtext,
            &mtext,
            &vocab.display().to_string(),
            &merges.display().to_string(),
        )
    }

    /// CLIP's own tokenizer (OpenAI's BPE vocabulary of 49 408 tokens), compiled into the
    /// binary: for models without tokenizer files, such as the random published-size
    /// models of `--model random:vit-b16`, from any working directory.
    pub fn clip_bpe() -> Result<Self> {
        // The same files the tiny fixture CLIP ships (copied from OpenAI's CLIP vocabulary
        // through the reference harness; tests/fixtures/README.md).
        const VOCAB: &str = include_str!("../../tests/fixtures/tiny-clip/hf/vocab.json");
        const MERGES: &str = include_str!("../../tests/fixtures/tiny-clip/hf/merges.txt");
        Self::from_vocab_merges_str(VOCAB, MERGES, "CLIP's vocab.json", "CLIP's merges.txt")
    }

    /// Builds CLIP's pipeline around the texts of `vocab.json` and `merges.txt`; the two
    /// origins name them in errors.
    pub fn from_vocab_merges_str(vtext: &str, mtext: &str, vocab: &str, merges: &str) -> Result<Self> {
        let vocab_map: serde_json::Map<String, Value> = serde_json::from_str(vtext)
            .with_context(|| format!("{vocab}: not a JSON object of token → id"))?;
        let id_of = |tok: &str| -> Result<u64> {
            vocab_map.get(tok).and_then(Value::as_u64).ok_or_else(|| {
                anyhow!("{vocab}: missing `{tok}` (CLIP's special tokens must be in the vocabulary)")
            })
        };
        let (sot, eot) = (id_of(SOT)?, id_of(EOT)?);
        let mut merge_list = Vec::new();
        for (i, line) in mtext.lines().enumerate() {
            if line.starts_with("#version") || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => merge_list.push(json!([a, b])),
                _ => bail!(
                    "{merges}: line {}: expected two symbols separated by one space, found `{line}`",
                    i + 1
                ),
            }
        }
        let spec = clip_tokenizer_spec(Value::Object(vocab_map), merge_list, sot, eot);
        let inner = Tokenizer::from_str(&spec.to_string())
            .map_err(|e| anyhow!("{vocab} + {merges}: cannot build the tokenizer: {e}"))?;
        Self::wrap(inner, vocab)
    }

    fn wrap(inner: Tokenizer, origin: &str) -> Result<Self> {
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| anyhow!("{origin}: the vocabulary has no `{t}` token"))
        };
        let (sot, eot) = (id(SOT)?, id(EOT)?);
        Ok(ClipTokenizer {
            inner,
            sot,
            eot,
            context_length: Self::CONTEXT_LENGTH,
        })
    }

    /// Id of `<|startoftext|>`.
    pub fn sot_id(&self) -> u32 {
        self.sot
    }

    /// Id of `<|endoftext|>`.
    pub fn eot_id(&self) -> u32 {
        self.eot
    }

    /// `[SOT, …, EOT]` without padding; longer texts are cut to the context length with
    /// EOT kept as the last token (OpenAI's `truncate=True`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = guarded("the tokenizer", || self.inner.encode(text, false))?
            .map_err(|e| anyhow!("cannot tokenize `{text}`: {e}"))?;
        let body = enc.get_ids();
        let keep = body.len().min(self.context_length - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.sot);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.eot);
        Ok(ids)
    }

    /// One prompt padded with 0 to the context length.
    pub fn encode_prompt(&self, text: &str) -> Result<TokenizedPrompt> {
        let mut ids = self.encode(text)?;
        let eot = ids.len() - 1;
        ids.resize(self.context_length, 0);
        Ok(TokenizedPrompt { ids, eot })
    }

    /// Several prompts.
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<TokenizedPrompt>> {
        texts.iter().map(|t| self.encode_prompt(t)).collect()
    }
}

/// The Hugging Face `tokenizer.json` of CLIP's pipeline (NFC, whitespace squeezed,
/// lower-cased; CLIP's split pattern; byte-level BPE with `</w>` word ends; start and end
/// tokens added) around a vocabulary (token → id) and its merges (`[a, b]` pairs).
pub fn clip_tokenizer_spec(vocab: Value, merges: Vec<Value>, sot: u64, eot: u64) -> Value {
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": sot, "content": SOT, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": eot, "content": EOT, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [EOT, eot], "cls": [SOT, sot], "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": EOT, "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    })
}

/// Runs a call into the `tokenizers` crate, turning a panic into an error: some malformed
/// `tokenizer.json` files make it panic instead of returning an error (found by our
/// fuzzer, e.g. an unknown decoder type; upstream: huggingface/tokenizers#2151).
fn guarded<T>(origin: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        anyhow!("{origin}: a malformed tokenizer definition (the tokenizers library failed: {why})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/hf")
    }

    fn reference() -> Vec<(String, Vec<u32>)> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokens_reference.json");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        v["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let text = e["text"].as_str().unwrap().to_string();
                let ids = e["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect();
                (text, ids)
            })
            .collect()
    }

    #[test]
    fn ids_equal_the_reference_on_all_fixture_prompts_for_both_file_kinds_and_the_embedded_one() {
        let refs = reference();
        assert_eq!(refs.len(), 313);
        let from_json = ClipTokenizer::from_dir(&dir()).unwrap();
        let from_files =
            ClipTokenizer::from_vocab_merges(&dir().join("vocab.json"), &dir().join("merges.txt")).unwrap();
        let embedded = ClipTokenizer::clip_bpe().unwrap();
        for tok in [&from_json, &from_files, &embedded] {
            for (text, ids) in &refs {
                let got = tok.encode_prompt(text).unwrap();
                assert_eq!(&got.ids, ids, "prompt `{text}`");
                assert_eq!(got.ids[got.eot], 49407);
            }
        }
    }

    #[test]
    fn truncation_keeps_the_end_of_text_token() {
        let tok = ClipTokenizer::from_dir(&dir()).unwrap();
        let long = vec!["photo"; 200].join(" ");
        let t = tok.encode_prompt(&long).unwrap();
        assert_eq!(t.eot, 76);
        assert_eq!(t.ids[76], tok.eot_id());
        assert_eq!(t.ids[0], tok.sot_id());
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let e = format!("{:#}", ClipTokenizer::from_dir(tmp.path()).err().unwrap());
        assert!(e.contains("no tokenizer files"), "{e}");
        std::fs::write(tmp.path().join("tokenizer.json"), "{ not json").unwrap();
        let e = format!("{:#}", ClipTokenizer::from_dir(tmp.path()).err().unwrap());
        assert!(
            e.contains("tokenizer.json") && e.contains("does not parse"),
            "{e}"
        );
        std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
        std::fs::write(tmp.path().join("vocab.json"), "{\"a\": 0, \"b</w>\": 1}").unwrap();
        std::fs::write(tmp.path().join("merges.txt"), "#version: 0.2\na b\n").unwrap();
        let e = format!("{:#}", ClipTokenizer::from_dir(tmp.path()).err().unwrap());
        assert!(e.contains("vocab.json") && e.contains("<|startoftext|>"), "{e}");
        std::fs::write(
            tmp.path().join("vocab.json"),
            "{\"<|startoftext|>\": 0, \"<|endoftext|>\": 1}",
        )
        .unwrap();
        std::fs::write(tmp.path().join("merges.txt"), "#version: 0.2\na b c\n").unwrap();
        let e = format!("{:#}", ClipTokenizer::from_dir(tmp.path()).err().unwrap());
        assert!(e.contains("merges.txt") && e.contains("line 2"), "{e}");
    }
}

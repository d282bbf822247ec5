//! The world's vocabulary as a CLIP byte-level BPE tokenizer.
//!
//! Layout of the vocabulary, as CLIP's: the 256 byte symbols in GPT-2's byte-to-unicode
//! order, the same 256 with the end-of-word suffix `</w>`, one token per learned merge
//! (in merge order), then `<|startoftext|>` and `<|endoftext|>`. Merges are learned here,
//! by plain BPE (repeatedly merge the most frequent adjacent pair over the distinct
//! words, ties to the smallest pair) on every word of the world's captions and class
//! names, until each of those words is a single token. The byte symbols make any other
//! text tokenizable too (letter by letter), so nothing is ever unknown.
//!
//! [`write_tokenizer_files`] writes `tokenizer.json` (the Hugging Face file, the same
//! pipeline as CLIP's: NFC, whitespace folding, lower-casing, CLIP's split pattern,
//! byte-level BPE with `</w>`, start/end tokens around every text), `vocab.json` and
//! `merges.txt`; [`crate::clip::tokenizer::ClipTokenizer`] reads either form. Everything
//! is deterministic: the same code gives the same ids, byte for byte the same files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::{captions, classes};
use crate::clip::tokenizer::{clip_tokenizer_spec, EOT, SOT};
use crate::report::atomic;

/// End-of-word suffix of CLIP's BPE.
const EOW: &str = "</w>";

/// GPT-2's reversible byte → printable-character map, in CLIP's vocabulary order.
fn byte_symbols() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(u32::from('¡')..=u32::from('¬'))
        .chain(u32::from('®')..=u32::from('ÿ'))
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    cs.into_iter()
        .map(|c| char::from_u32(c).expect("valid code point"))
        .collect()
}

/// Every word (letter run) of every caption and class name, sorted, without duplicates.
pub fn words() -> Vec<String> {
    let mut texts: Vec<String> = classes::prompt_names();
    for c in 0..classes::NUM_CLASSES {
        texts.extend(captions::all(classes::Class::of(c)));
    }
    let set: BTreeSet<String> = texts
        .iter()
        .flat_map(|t| {
            t.split(|ch: char| !ch.is_alphabetic())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        })
        .collect();
    set.into_iter().collect()
}

/// A word as BPE symbols before any merge: its characters, the last with `</w>`.
fn symbols(word: &str) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i + 1 == chars.len() {
                format!("{c}{EOW}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Learns merges over `words` until every word is one symbol.
pub fn learn_merges(words: &[String]) -> Vec<(String, String)> {
    let mut seqs: Vec<Vec<String>> = words.iter().map(|w| symbols(w)).collect();
    let mut merges = Vec::new();
    loop {
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for s in &seqs {
            for pair in s.windows(2) {
                *counts.entry((pair[0].clone(), pair[1].clone())).or_default() += 1;
            }
        }
        // Most frequent; among equals the smallest pair (BTreeMap order, first wins).
        let Some((best, _)) =
            counts.iter().fold(
                None,
                |acc: Option<(&(String, String), usize)>, (p, &n)| match acc {
                    Some((_, m)) if m >= n => acc,
                    _ => Some((p, n)),
                },
            )
        else {
            break;
        };
        let best = best.clone();
        let joined = format!("{}{}", best.0, best.1);
        for s in &mut seqs {
            let mut out = Vec::with_capacity(s.len());
            let mut i = 0;
            while i < s.len() {
                if i + 1 < s.len() && s[i] == best.0 && s[i + 1] == best.1 {
                    out.push(joined.clone());
                    i += 2;
                } else {
                    out.push(s[i].clone());
                    i += 1;
                }
            }
            *s = out;
        }
        merges.push(best);
    }
    merges
}

/// The tokenizer's vocabulary (token → id) and merges.
pub struct Vocabulary {
    /// Token strings in id order.
    pub tokens: Vec<String>,
    /// Merges in rank order.
    pub merges: Vec<(String, String)>,
}

impl Vocabulary {
    /// The world's vocabulary (see the module documentation).
    pub fn build() -> Self {
        let base = byte_symbols();
        let mut tokens: Vec<String> = base.iter().map(|c| c.to_string()).collect();
        tokens.extend(base.iter().map(|c| format!("{c}{EOW}")));
        let merges = learn_merges(&words());
        for (a, b) in &merges {
            tokens.push(format!("{a}{b}"));
        }
        tokens.push(SOT.to_string());
        tokens.push(EOT.to_string());
        Vocabulary { tokens, merges }
    }

    /// Number of tokens (the text model's `vocab_size`).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    fn vocab_map(&self) -> serde_json::Map<String, Value> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect()
    }

    /// `vocab.json`: token → id.
    pub fn vocab_json(&self) -> String {
        serde_json::to_string(&Value::Object(self.vocab_map())).expect("serializable")
    }

    /// `merges.txt`: a version line, then one merge per line.
    pub fn merges_txt(&self) -> String {
        let mut out = String::from("#version: 0.2\n");
        for (a, b) in &self.merges {
            out.push_str(&format!("{a} {b}\n"));
        }
        out
    }

    /// `tokenizer.json`, CLIP's Hugging Face pipeline around this vocabulary.
    pub fn tokenizer_json(&self) -> String {
        let n = self.tokens.len();
        let (sot, eot) = (n - 2, n - 1);
        let merges: Vec<Value> = self.merges.iter().map(|(a, b)| json!([a, b])).collect();
        let spec = clip_tokenizer_spec(Value::Object(self.vocab_map()), merges, sot as u64, eot as u64);
        serde_json::to_string_pretty(&spec).expect("serializable")
    }
}

/// Writes `tokenizer.json`, `vocab.json` and `merges.txt` of the world's vocabulary into
/// `dir` (created if needed; each file atomically). Returns the vocabulary size.
pub fn write_tokenizer_files(dir: &Path) -> Result<usize> {
    let v = Vocabulary::build();
    atomic::write(&dir.join("tokenizer.json"), v.tokenizer_json().as_bytes())?;
    atomic::write(&dir.join("vocab.json"), v.vocab_json().as_bytes())?;
    atomic::write(&dir.join("merges.txt"), v.merges_txt().as_bytes())?;
    Ok(v.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::tokenizer::ClipTokenizer;

    fn tokenizers() -> (tempfile::TempDir, ClipTokenizer, ClipTokenizer) {
        let dir = tempfile::tempdir().unwrap();
        write_tokenizer_files(dir.path()).unwrap();
        let json = ClipTokenizer::from_tokenizer_json(&dir.path().join("tokenizer.json")).unwrap();
        let files =
            ClipTokenizer::from_vocab_merges(&dir.path().join("vocab.json"), &dir.path().join("merges.txt"))
                .unwrap();
        (dir, json, files)
    }

    #[test]
    fn every_world_word_is_one_token_and_every_caption_tokenizes_without_unknowns() {
        let (_dir, json, files) = tokenizers();
        let v = Vocabulary::build();
        let eot = json.eot_id();
        assert_eq!(eot as usize, v.len() - 1);
        assert_eq!(json.sot_id() as usize, v.len() - 2);
        for w in words() {
            let ids = json.encode(&w).unwrap();
            assert_eq!(ids.len(), 3, "`{w}` is not one token: {ids:?}");
            assert_eq!(v.tokens[ids[1] as usize], format!("{w}</w>"));
        }
        let mut texts = Vec::new();
        for c in 0..classes::NUM_CLASSES {
            let class = classes::Class::of(c);
            texts.push(format!("a photo of a {}.", class.prompt_name()));
            texts.push(format!("X X X X {}.", class.prompt_name()));
            texts.extend(captions::all(class));
        }
        for t in &texts {
            let a = json.encode_prompt(t).unwrap();
            let b = files.encode_prompt(t).unwrap();
            assert_eq!(a, b, "`{t}`: tokenizer.json and vocab.json + merges.txt disagree");
            // The unknown token is <|endoftext|>: it must appear only at the end.
            let body = &a.ids[1..a.eot];
            assert!(!body.contains(&eot), "`{t}` has an unknown token: {:?}", a.ids);
            // One token per word and punctuation mark.
            let pieces = t.split_whitespace().count() + t.matches(['.', ',']).count();
            assert_eq!(body.len(), pieces, "`{t}`: {body:?}");
        }
    }

    /// The ids are part of the shipped model: pin them.
    #[test]
    fn ids_are_stable() {
        let (_dir, json, _) = tokenizers();
        let v = Vocabulary::build();
        assert_eq!(v.len(), PINNED_VOCAB_SIZE);
        let ids = json.encode("a photo of a striped red circle.").unwrap();
        assert_eq!(ids, PINNED_IDS);
        // Same bytes every time.
        assert_eq!(Vocabulary::build().tokenizer_json(), v.tokenizer_json());
        // Letters outside the world's words fall back to byte symbols, never unknown.
        let odd = json.encode("zebra qx").unwrap();
        assert!(odd.len() > 4 && !odd[1..odd.len() - 1].contains(&json.eot_id()));
    }

    const PINNED_VOCAB_SIZE: usize = 605;
    const PINNED_IDS: &[u32] = &[603, 320, 585, 582, 320, 596, 590, 551, 269, 604];
}

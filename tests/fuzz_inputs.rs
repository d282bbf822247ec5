//! The fast variants of the fuzz targets (`fuzz/fuzz_targets/`, docs/reliability.md):
//! every parser that reads a user file gets each seed of its corpus (`fuzz/corpus/<target>`)
//! and a few hundred mutations of them (byte edits, insertions, truncations) and random
//! inputs; each must return a value or an error, never panic. The long runs use
//! cargo-fuzz on the same targets and corpora.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fedpurel::clip::tokenizer::ClipTokenizer;
use proptest::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = root().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no seeds", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// What one fuzz target does with an input (the same calls as fuzz/fuzz_targets/*.rs).
fn run(target: &str, data: &[u8]) {
    let text = std::str::from_utf8(data).ok();
    match target {
        "cifar_pickle" => {
            let _ = fedpurel::data::cifar::parse_pickle_split(data, "train", 100, 20);
            let _ = fedpurel::data::cifar::parse_pickle_meta(data, "meta");
        }
        "cifar_binary" => {
            let _ = fedpurel::data::cifar::parse_binary_split(data, "train.bin", 100, 20);
            let _ = fedpurel::data::cifar::parse_names(data, "fine_label_names.txt");
        }
        "list_files" => {
            let _ = fedpurel::data::listfile::parse_list(data, "L.txt");
            let _ = fedpurel::data::listfile::parse_wnid_names(data, "N.txt");
            let _ = fedpurel::data::listfile::parse_label_names(data, "C.txt");
        }
        "hf_config" => {
            if let Some(t) = text {
                let _ = fedpurel::clip::ClipConfig::from_hf_json(t, Path::new("config.json"));
            }
        }
        "checkpoint" => {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("model.safetensors"), data).unwrap();
            if let Ok(ck) = fedpurel::clip::Checkpoint::open(dir.path()) {
                let _ = fedpurel::clip::Clip::from_checkpoint(&ck, &fedpurel::clip::LoadOptions::default());
            }
        }
        "tokenizer_input" => {
            if let Some(t) = text {
                let tok = tokenizer();
                if let Ok(p) = tok.encode_prompt(t) {
                    assert_eq!(p.ids.len(), ClipTokenizer::CONTEXT_LENGTH);
                    assert_eq!((p.ids[0], p.ids[p.eot]), (tok.sot_id(), tok.eot_id()));
                }
            }
        }
        "tokenizer_files" => {
            if let Some(t) = text {
                if let Ok(tok) = ClipTokenizer::from_tokenizer_json_str(t, "tokenizer.json") {
                    let _ = tok.encode_prompt("a photo of a red circle.");
                }
            }
        }
        "run_config" => {
            if let Some(t) = text {
                let _ = fedpurel::setup::config::parse_config(t, Path::new("config.toml"));
            }
        }
        "split_file" => {
            if let Some(t) = text {
                let _ = fedpurel::data::partition::import::parse(t, "partition.json");
            }
        }
        other => panic!("no target {other}"),
    }
}

fn tokenizer() -> &'static ClipTokenizer {
    static TOK: OnceLock<ClipTokenizer> = OnceLock::new();
    TOK.get_or_init(|| ClipTokenizer::from_dir(&root().join("tests/fixtures/tiny-clip/hf")).unwrap())
}

const TARGETS: [&str; 9] = [
    "cifar_pickle",
    "cifar_binary",
    "list_files",
    "hf_config",
    "checkpoint",
    "tokenizer_input",
    "tokenizer_files",
    "run_config",
    "split_file",
];

/// A seed mutated by byte edits, one insertion and a truncation.
fn mutate(
    seed: &[u8],
    edits: &[(prop::sample::Index, u8)],
    insert: (prop::sample::Index, u8),
    cut: prop::sample::Index,
) -> Vec<u8> {
    let mut b = seed.to_vec();
    if b.is_empty() {
        return b;
    }
    for (at, v) in edits {
        let i = at.index(b.len());
        b[i] = *v;
    }
    let i = insert.0.index(b.len());
    b.insert(i, insert.1);
    let keep = b.len() - cut.index(b.len().min(64) + 1).min(b.len());
    b.truncate(keep);
    b
}

#[test]
fn every_seed_parses_or_fails_cleanly() {
    for t in TARGETS {
        for s in seeds(t) {
            run(t, &s);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn mutated_seeds_never_panic(
        target in prop::sample::select(TARGETS.to_vec()),
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        insert in (any::<prop::sample::Index>(), any::<u8>()),
        cut in any::<prop::sample::Index>(),
    ) {
        let all = seeds(target);
        let seed = &all[pick.index(all.len())];
        run(target, &mutate(seed, &edits, insert, cut));
    }

    #[test]
    fn random_inputs_never_panic(
        target in prop::sample::select(TARGETS.to_vec()),
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        run(target, &bytes);
    }

    #[test]
    fn any_text_tokenizes_within_the_context(text in "\\PC{0,300}") {
        run("tokenizer_input", text.as_bytes());
    }
}

/// The fuzzer's first find: a `tokenizer.json` with an unknown decoder type made the
/// `tokenizers` crate panic; it is now an error naming the file.
#[test]
fn the_unknown_decoder_crash_is_an_error() {
    let text =
        std::fs::read_to_string(root().join("fuzz/corpus/tokenizer_files/crash-unknown-decoder-type.json"))
            .unwrap();
    let e = format!(
        "{:#}",
        ClipTokenizer::from_tokenizer_json_str(&text, "tokenizer.json")
            .err()
            .unwrap()
    );
    assert!(
        e.contains("tokenizer.json") && e.contains("malformed tokenizer definition"),
        "{e}"
    );
}

//! The demo CLIP compiled into the binary, so that `fedpurel demo` (and `--preset demo`)
//! work from any working directory and after `cargo install`: where the default model
//! path [`DEMO_MODEL`] names no directory, [`resolve`] writes the embedded files once to
//! a folder named by their SHA-256 under the system's temporary directory (staged, then
//! renamed, so a reader never sees half of it) and loads from there. `--model DIR`
//! always wins.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::presets::DEMO_MODEL;

/// The files a checkpoint directory needs: weights, config and tokenizer.
const FILES: [(&str, &[u8]); 5] = [
    (
        "model.safetensors",
        include_bytes!("../../assets/demo-clip/model.safetensors"),
    ),
    (
        "config.json",
        include_bytes!("../../assets/demo-clip/config.json"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../assets/demo-clip/tokenizer.json"),
    ),
    ("vocab.json", include_bytes!("../../assets/demo-clip/vocab.json")),
    ("merges.txt", include_bytes!("../../assets/demo-clip/merges.txt")),
];

/// SHA-256 (hex) over the embedded files' names and bytes.
fn digest() -> String {
    let mut h = Sha256::new();
    for (name, bytes) in FILES {
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `dir` holds every embedded file with the embedded bytes.
fn holds_embedded(dir: &Path) -> bool {
    FILES
        .iter()
        .all(|(name, bytes)| std::fs::read(dir.join(name)).is_ok_and(|b| b == *bytes))
}

/// Writes the embedded demo CLIP under `parent` (once; later calls find it) and returns
/// its directory.
pub fn materialize(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!("fedpurel-demo-clip-{}", &digest()[..16]));
    if holds_embedded(&dir) {
        return Ok(dir);
    }
    let staging = parent.join(format!(
        "fedpurel-demo-clip.partial-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&staging).with_context(|| format!("{}: cannot create", staging.display()))?;
    for (name, bytes) in FILES {
        let path = staging.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    if dir.exists() {
        // A damaged copy (or another process's, finished meanwhile): replace it unless
        // it is now complete.
        if holds_embedded(&dir) {
            let _ = std::fs::remove_dir_all(&staging);
            return Ok(dir);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        Err(_) if holds_embedded(&dir) => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir)
        }
        Err(e) => Err(e).with_context(|| format!("cannot move {} to {}", staging.display(), dir.display())),
    }
}

/// The directory to load `model` from: `model` itself, except that the default demo
/// path, when no such directory exists here, means the embedded demo CLIP.
pub fn resolve(model: &Path) -> Result<PathBuf> {
    if model == Path::new(DEMO_MODEL) && !model.is_dir() {
        return materialize(&std::env::temp_dir());
    }
    Ok(model.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_demo_clip_is_the_shipped_one_and_is_written_once() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEMO_MODEL);
        assert!(
            holds_embedded(&shipped),
            "assets/demo-clip differs from the embedded copy"
        );
        let tmp = tempfile::tempdir().unwrap();
        let dir = materialize(tmp.path()).unwrap();
        assert!(holds_embedded(&dir));
        crate::clip::Checkpoint::open(&dir).unwrap();
        crate::clip::tokenizer::ClipTokenizer::from_dir(&dir).unwrap();
        // A damaged copy is replaced; an intact one is reused.
        std::fs::write(dir.join("config.json"), b"{").unwrap();
        assert_eq!(materialize(tmp.path()).unwrap(), dir);
        assert!(holds_embedded(&dir));
        assert_eq!(materialize(tmp.path()).unwrap(), dir);
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "staging folders left behind: {left:?}");
        // Another path is taken as given.
        assert_eq!(resolve(Path::new("some/dir")).unwrap(), Path::new("some/dir"));
    }
}

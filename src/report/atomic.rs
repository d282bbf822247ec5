//! Atomic file writes: the bytes go to a temporary file in the target's folder, which is
//! fsynced and then renamed over the target (a rename within one file system is atomic);
//! the folder is fsynced after the rename so the new name survives a power cut too. A
//! reader therefore sees the old file or the new one, never a truncated one.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically, creating the parent folder if needed.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    // Unique per write, not only per process: runs of one grid write concurrently
    // (`compare --jobs`), and two of them may write the same shared file (the feature cache).
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        if let Some(e) = crate::faults::write_error() {
            return Err(e);
        }
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        crate::faults::point("atomic-write:before-rename");
        std::fs::rename(&tmp, path)?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Fsyncs a folder so that a rename inside it is durable (best effort: some file systems
/// do not support syncing a directory, and the data itself is already synced).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/x.json");
        super::write(&p, b"one").unwrap();
        super::write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path().join("sub")).unwrap().count(), 1);
    }

    /// Threads writing the same file at once each leave a whole copy, never a mix, and
    /// no temporary file stays behind.
    #[test]
    fn concurrent_writers_of_one_file_never_mix() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shared.bin");
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        super::write(p, &vec![t; 64 << 10]).unwrap();
                    }
                });
            }
        });
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 64 << 10);
        assert!(bytes.iter().all(|&b| b == bytes[0]), "a mix of writers");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}

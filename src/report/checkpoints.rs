//! The committed training state of a run directory (`checkpoints/`), written so that a run
//! killed at any moment resumes from its last complete round:
//!
//! ```text
//! checkpoints/
//!   latest                  "round-0004": the committed state (one atomic write)
//!   round-0004/             the state after 4 rounds: global.safetensors,
//!                           client{k}.safetensors, client{k}-extra.safetensors,
//!                           momentum.safetensors, server-extra.safetensors, state.json
//!   round-0003/             the state before it, kept as a fallback
//!   rounds/global-NNNN.safetensors   the global parameters after every round (for eval)
//! ```
//! A state is written whole into `.round-NNNN.tmp/`, renamed to `round-NNNN/`, and only
//! then does `latest` move. `state.json` is the manifest: format version, the clients and
//! optional parts present, and the size and SHA-256 of every file. Loading checks all of
//! them; a damaged state is reported and the previous one used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::atomic;
use crate::faults;
use crate::fed::federation::FedState;
use crate::peft::params::ParamSet;

/// The manifest format this version writes (1: the flat layout without checksums).
pub const FORMAT_VERSION: u32 = 2;

/// The file in `checkpoints/` naming the committed round folder.
const LATEST: &str = "latest";

/// Size and digest of one checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FileDigest {
    bytes: u64,
    sha256: String,
}

/// `state.json`: what a checkpoint folder holds.
#[derive(Serialize, Deserialize)]
struct Manifest {
    /// Absent (0) in the flat layout of earlier versions.
    #[serde(default)]
    format_version: u32,
    rounds_done: usize,
    clients: usize,
    trained_clients: Vec<usize>,
    has_momentum: bool,
    /// Clients with algorithm state.
    #[serde(default)]
    extra_clients: Vec<usize>,
    /// Whether the algorithm keeps server state.
    #[serde(default)]
    has_server_extra: bool,
    /// Every other file of the folder, by name.
    #[serde(default)]
    files: BTreeMap<String, FileDigest>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The checkpoint store of one run directory.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    /// `<run>/checkpoints`.
    pub dir: PathBuf,
}

impl Checkpoints {
    /// The store under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Checkpoints { dir }
    }

    /// The global parameters after round `round` (kept for every round).
    pub fn round_global(&self, round: usize) -> PathBuf {
        self.dir.join(format!("rounds/global-{round:04}.safetensors"))
    }

    /// Saves the state after a round as one unit (see the module doc); the commit point
    /// is the write of `latest`. Older round folders are removed after the commit, the
    /// previous one is kept.
    pub fn save(&self, state: &FedState) -> Result<()> {
        if state.rounds_done > 0 {
            state.global.save(&self.round_global(state.rounds_done - 1))?;
        }
        let name = format!("round-{:04}", state.rounds_done);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut files = BTreeMap::new();
        let mut put = |file: String, set: &ParamSet| -> Result<()> {
            let bytes = set
                .to_safetensors()
                .with_context(|| format!("{}", tmp.join(&file).display()))?;
            atomic::write(&tmp.join(&file), &bytes)?;
            faults::point("checkpoint:file-written");
            files.insert(
                file,
                FileDigest {
                    bytes: bytes.len() as u64,
                    sha256: sha256_hex(&bytes),
                },
            );
            Ok(())
        };
        put("global.safetensors".into(), &state.global)?;
        let mut trained = Vec::new();
        for (k, p) in state.private.iter().enumerate() {
            if let Some(p) = p {
                put(format!("client{k}.safetensors"), p)?;
                trained.push(k);
            }
        }
        if let Some(m) = &state.momentum {
            put("momentum.safetensors".into(), m)?;
        }
        let mut extra = Vec::new();
        for (k, p) in state.client_extra.iter().enumerate() {
            if let Some(p) = p {
                put(format!("client{k}-extra.safetensors"), p)?;
                extra.push(k);
            }
        }
        if let Some(x) = &state.server_extra {
            put("server-extra.safetensors".into(), x)?;
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            rounds_done: state.rounds_done,
            clients: state.private.len(),
            trained_clients: trained,
            has_momentum: state.momentum.is_some(),
            extra_clients: extra,
            has_server_extra: state.server_extra.is_some(),
            files,
        };
        atomic::write(
            &tmp.join("state.json"),
            serde_json::to_string_pretty(&manifest)?.as_bytes(),
        )?;
        let dst = self.dir.join(&name);
        if dst.exists() {
            // A folder of this round that was never committed (a crash after its rename).
            std::fs::remove_dir_all(&dst).with_context(|| format!("cannot remove {}", dst.display()))?;
        }
        std::fs::rename(&tmp, &dst)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))?;
        atomic::sync_dir(&self.dir);
        faults::point("checkpoint:folder-renamed");
        atomic::write(&self.dir.join(LATEST), name.as_bytes())?;
        faults::point("checkpoint:committed");
        self.remove_stale(state.rounds_done);
        Ok(())
    }

    /// Removes round folders older than the previous round and leftovers of interrupted
    /// saves (best effort: a folder that cannot be removed is only disk space).
    fn remove_stale(&self, rounds_done: usize) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let old_round = n
                .strip_prefix("round-")
                .and_then(|r| r.parse::<usize>().ok())
                .is_some_and(|r| r + 1 < rounds_done);
            let leftover = n.starts_with(".round-") && n.ends_with(".tmp");
            // The flat files of format 1 are superseded by the first folder.
            let flat = n == "state.json" || (n.ends_with(".safetensors") && e.path().is_file());
            if old_round || leftover {
                let _ = std::fs::remove_dir_all(e.path());
            } else if flat {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Loads the committed state, if there is one: the folder `latest` names, or, when
    /// that one is damaged, the newest earlier complete folder (with a warning on stderr
    /// naming the damage). `None` for a fresh run.
    pub fn load(&self, device: &Device) -> Result<Option<FedState>> {
        let latest = self.dir.join(LATEST);
        if !latest.is_file() {
            // Format 1: one flat set of files directly in checkpoints/.
            return if self.dir.join("state.json").is_file() {
                load_folder(&self.dir, device).map(Some)
            } else {
                Ok(None)
            };
        }
        let name =
            std::fs::read_to_string(&latest).with_context(|| format!("cannot read {}", latest.display()))?;
        let primary = self.dir.join(name.trim());
        let err = match load_folder(&primary, device) {
            Ok(s) => return Ok(Some(s)),
            Err(e) => e,
        };
        let mut others: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot list {}", self.dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p != &primary
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("round-"))
            })
            .collect();
        others.sort();
        for p in others.iter().rev() {
            if let Ok(s) = load_folder(p, device) {
                tracing::warn!("{err:#}; resuming from the previous checkpoint {}", p.display());
                eprintln!(
                    "warning: {err:#}\nwarning: resuming from the previous checkpoint {} (round {})",
                    p.display(),
                    s.rounds_done
                );
                return Ok(Some(s));
            }
        }
        Err(err.context(format!(
            "{}: the latest checkpoint is damaged and no earlier one is intact; delete the run directory to start over",
            self.dir.display()
        )))
    }
}

/// Reads one file of a checkpoint folder, checked against the manifest (format ≥ 2).
fn read_checked(dir: &Path, m: &Manifest, file: &str) -> Result<Vec<u8>> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if m.format_version >= 2 {
        let want = m
            .files
            .get(file)
            .ok_or_else(|| anyhow!("{}: state.json does not list {file}", dir.display()))?;
        if bytes.len() as u64 != want.bytes {
            bail!(
                "{}: {} bytes, the manifest says {} (a truncated or damaged checkpoint file)",
                path.display(),
                bytes.len(),
                want.bytes
            );
        }
        let got = sha256_hex(&bytes);
        if got != want.sha256 {
            bail!(
                "{}: SHA-256 {got}, the manifest says {} (a damaged checkpoint file)",
                path.display(),
                want.sha256
            );
        }
    }
    Ok(bytes)
}

/// Reads the state of one checkpoint folder, verifying every file.
fn load_folder(dir: &Path, device: &Device) -> Result<FedState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let m: Manifest =
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: not a run state: {e}", path.display()))?;
    if m.format_version > FORMAT_VERSION {
        bail!(
            "{}: checkpoint format {} was written by a newer fedpurel (this one reads formats up to {FORMAT_VERSION})",
            path.display(),
            m.format_version
        );
    }
    let load = |file: &str| -> Result<ParamSet> {
        let bytes = read_checked(dir, &m, file)?;
        ParamSet::from_safetensors(&bytes, device).with_context(|| format!("{}", dir.join(file).display()))
    };
    let check_client = |k: usize| -> Result<()> {
        if k >= m.clients {
            bail!(
                "{}: client {k} out of range (the run has {} clients)",
                path.display(),
                m.clients
            );
        }
        Ok(())
    };
    let mut private = vec![None; m.clients];
    for &k in &m.trained_clients {
        check_client(k)?;
        private[k] = Some(load(&format!("client{k}.safetensors"))?);
    }
    let mut client_extra = vec![None; m.clients];
    for &k in &m.extra_clients {
        check_client(k)?;
        client_extra[k] = Some(load(&format!("client{k}-extra.safetensors"))?);
    }
    Ok(FedState {
        rounds_done: m.rounds_done,
        global: load("global.safetensors")?,
        private,
        momentum: m.has_momentum.then(|| load("momentum.safetensors")).transpose()?,
        server_extra: m
            .has_server_extra
            .then(|| load("server-extra.safetensors"))
            .transpose()?,
        client_extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn state(rounds: usize, v: f32) -> FedState {
        let set = |x: f32| {
            ParamSet::from_pairs([("w".to_string(), Tensor::full(x, (2, 3), &Device::Cpu).unwrap())])
        };
        FedState {
            rounds_done: rounds,
            global: set(v),
            private: vec![Some(set(v + 1.0)), None],
            momentum: Some(set(v + 2.0)),
            server_extra: None,
            client_extra: vec![None, Some(set(v + 3.0))],
        }
    }

    fn value(s: &FedState) -> f32 {
        s.global
            .get("w")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0]
    }

    #[test]
    fn saves_loads_and_keeps_one_previous_round() {
        let d = tempfile::tempdir().unwrap();
        let ck = Checkpoints::new(d.path().join("checkpoints"));
        assert!(ck.load(&Device::Cpu).unwrap().is_none());
        for r in 1..=3 {
            ck.save(&state(r, r as f32)).unwrap();
        }
        let s = ck.load(&Device::Cpu).unwrap().unwrap();
        assert_eq!((s.rounds_done, value(&s)), (3, 3.0));
        assert!(s.private[0].is_some() && s.private[1].is_none());
        assert!(s.client_extra[1].is_some() && s.momentum.is_some());
        let mut names: Vec<String> = std::fs::read_dir(&ck.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["latest", "round-0002", "round-0003", "rounds"]);
    }

    #[test]
    fn a_damaged_latest_state_falls_back_to_the_previous_one() {
        let d = tempfile::tempdir().unwrap();
        let ck = Checkpoints::new(d.path().join("checkpoints"));
        ck.save(&state(1, 1.0)).unwrap();
        ck.save(&state(2, 2.0)).unwrap();
        // One flipped byte in a client file: same size, other digest.
        let f = ck.dir.join("round-0002/client0.safetensors");
        let mut bytes = std::fs::read(&f).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&f, bytes).unwrap();
        let s = ck.load(&Device::Cpu).unwrap().unwrap();
        assert_eq!((s.rounds_done, value(&s)), (1, 1.0));
        // A truncated file in both: the error names the file and the damage.
        std::fs::write(ck.dir.join("round-0001/global.safetensors"), b"xx").unwrap();
        let e = format!("{:#}", ck.load(&Device::Cpu).unwrap_err());
        assert!(e.contains("client0.safetensors") && e.contains("SHA-256"), "{e}");
        assert!(e.contains("no earlier one is intact"), "{e}");
    }

    #[test]
    fn a_newer_format_is_refused_with_the_version() {
        let d = tempfile::tempdir().unwrap();
        let ck = Checkpoints::new(d.path().join("checkpoints"));
        ck.save(&state(1, 1.0)).unwrap();
        let p = ck.dir.join("round-0001/state.json");
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"format_version\": 2", "\"format_version\": 9");
        std::fs::write(&p, text).unwrap();
        let e = format!("{:#}", ck.load(&Device::Cpu).unwrap_err());
        assert!(e.contains("format 9") && e.contains("newer fedpurel"), "{e}");
    }

    #[test]
    fn interrupted_saves_leave_the_committed_state_in_force() {
        let d = tempfile::tempdir().unwrap();
        let ck = Checkpoints::new(d.path().join("checkpoints"));
        ck.save(&state(1, 1.0)).unwrap();
        // A save of round 2 that got as far as its folder but not `latest`.
        ck.save(&state(2, 2.0)).unwrap();
        std::fs::write(ck.dir.join("latest"), "round-0001").unwrap();
        std::fs::create_dir_all(ck.dir.join(".round-0003.tmp")).unwrap();
        let s = ck.load(&Device::Cpu).unwrap().unwrap();
        assert_eq!(s.rounds_done, 1);
        // The next save of round 2 replaces the uncommitted folder and clears leftovers.
        ck.save(&state(2, 5.0)).unwrap();
        assert_eq!(value(&ck.load(&Device::Cpu).unwrap().unwrap()), 5.0);
        assert!(!ck.dir.join(".round-0003.tmp").exists());
    }
}
